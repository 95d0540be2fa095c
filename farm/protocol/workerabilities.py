"""What a worker's connection serves: CAN_DO, CANT_DO and RESET_ABILITIES, and the ECHO_REQ
that settles a function given up with a grab out before it is registered again.

A mixin of :class:`farm.protocol.worker.WorkerSession` (split off along this seam: the
grab/sleep/wake cycle and a job's answers stay there). A function given up (CANT_DO, or all
of them in RESET_ABILITIES) while a grab is out may still come back as that grab's answer:
the server assigned the job before it read the CANT_DO, and gives it back on reading it
(docs/held-grab.md, give-back). Such a job is not run (``withdrawn``,
``JobAssigned.given_back``), and the function registered again before the server has read
the CANT_DO sends its CAN_DO only once an ECHO_REQ sent after it is answered: a CAN_DO sent
at once made the given-back job look like one of the function served again.
"""

from __future__ import annotations

from collections import deque

from farm.protocol.codec import encode_req, name_problem, text_bytes
from farm.protocol.workertable import (
    _ABSENT,
    _GRABBING,
    _READY,
    _SETTLED,
    _WORKING,
    PT,
    WorkerState,
)

__all__ = ["WorkerAbilities"]


class WorkerAbilities:
    """The registration half of ``WorkerSession`` (see the module docstring)."""

    # The session's, read and written here (declared for the type checker).
    abilities: dict[str, float | None]
    state: WorkerState
    _out: bytearray

    def _forget_registrations(self) -> None:
        """A new session, or a fresh connection: nothing given up, nothing waiting."""
        self._reset_due = False  # RESET_ABILITIES asked for mid-job: sent after its answer
        # Our RESET_ABILITIES went while a grab was out: the NO_JOB that ends a held grab is
        # its answer, after which nothing is left to sleep for (see receive's NO_JOB).
        self._reset_answer = False
        self._cant_do_due: dict[str, None] = {}  # CANT_DOs asked for mid-job, in order: likewise
        # Names sent as CANT_DO (or in a RESET_ABILITIES) on this connection, no CAN_DO sent
        # since (see withdrawn): a job of theirs read now was assigned before the server read
        # that, and is given back there.
        self._withdrawn: set[str] = set()
        # Those given up while the grab now out was out, each with the number of ECHO_REQs
        # sent before: that grab may still be answered with a job of theirs. Registered again,
        # their CAN_DO waits (``_held_back``, name -> the ECHO_RES it waits for) for the
        # answer of an ECHO_REQ sent after: by then the server has read the CANT_DO, and
        # anything it assigned before is read here (add_ability).
        self._unsettled: dict[str, int] = {}
        self._held_back: dict[str, int] = {}
        self._echoes = 0  # ECHO_REQs sent on this connection
        # CAN_DOs sent whose names farm's job server refuses (gearmand serves them), in order,
        # each with the ERROR it gets there: the server answers in order, so each such ERROR
        # names its function (bounded: against gearmand none comes to take them off).
        self._refusable: deque[tuple[str, str, str]] = deque(maxlen=1024)

    def _can_do(self, name: str, timeout: float | None) -> bytes:
        if (problem := name_problem(raw := text_bytes(name))) is not None:
            self._refusable.append((problem[0], f"function name {problem[1]}", name))
        if timeout:
            # Milliseconds: gearmand 1.1.20 reads every value so, farm those from 1000 (below:
            # seconds, docs/server.md); seconds made 3600 s 3.6 s on gearmand. Less than
            # MIN_TIMEOUT, where the two readings meet, check_timeout refuses at registration.
            millis = round(timeout * 1000)
            return encode_req(PT.CAN_DO_TIMEOUT, raw, b"%d" % millis)
        return encode_req(PT.CAN_DO, raw)

    def add_ability(self, name: str, timeout: float | None) -> None:
        """Register ``name`` (CAN_DO). One given up (CANT_DO, RESET_ABILITIES) while the grab
        now out was out waits for an ECHO_RES: the server may have answered that grab with a
        job of it before it read the CANT_DO, and gives that job back on reading it; after a
        CAN_DO sent at once such a job looked like the worker's own, which ran it, its answer
        dropped, and it ran again elsewhere (docs/held-grab.md, give-back)."""
        self.abilities[name] = timeout
        self._cant_do_due.pop(name, None)
        if name in self._held_back or (self.state is _GRABBING and name in self._unsettled):
            self._hold_back(name)
            return
        self._withdrawn.discard(name)
        if self.state is not WorkerState.DISCONNECTED and not self._reset_due:
            self._out += self._can_do(name, timeout)  # (else it follows the reset, below)
        if self.state is WorkerState.SLEEPING:
            # Its jobs may wait already, and a server (gearmand) wakes a sleeper only for a
            # job submitted later: look, as if woken.
            self.state = _READY

    def _hold_back(self, name: str) -> None:
        """Send ``name``'s CAN_DO once an ECHO_REQ sent after its CANT_DO is answered: the
        one already on its way, or a new one."""
        if name not in self._held_back:
            after = self._unsettled[name]
            if self._echoes == after:  # none sent since the CANT_DO
                self._echoes += 1
                self._out += encode_req(PT.ECHO_REQ, _SETTLED + b"%d" % self._echoes)
            self._held_back[name] = after + 1

    def _settled(self, data: bytes) -> None:
        """ECHO_RES: the server has read what we sent before its ECHO_REQ, and we have read
        what it sent before, a job it gave back among it. The CAN_DOs that waited for it
        go now, in any state, and a job of theirs after them is ours."""
        if not data.startswith(_SETTLED) or not data[len(_SETTLED) :].isdigit():
            return  # not ours: ignored
        echo = int(data[len(_SETTLED) :])
        for name in [n for n, after in self._unsettled.items() if after < echo]:
            del self._unsettled[name]
        due = [n for n, awaited in self._held_back.items() if awaited <= echo]
        for name in due:
            del self._held_back[name]
            self._withdrawn.discard(name)
            if name in self.abilities:  # (always: remove_ability and resets drop it here)
                self._out += self._can_do(name, self.abilities[name])
        if due and self.state is WorkerState.SLEEPING:
            self.state = _READY  # its jobs may wait: look, as add_ability does

    def remove_ability(self, name: str) -> None:
        """Unregister one function (CANT_DO); one not among ``abilities`` is ignored. With a
        job in hand it is sent after the job's answer: gearmand and farm put back in its
        queue a job whose worker gives up its function, and drop its answer."""
        if self.abilities.pop(name, _ABSENT) is _ABSENT or self.state is WorkerState.DISCONNECTED:
            return
        if self._held_back.pop(name, None) is not None:
            return  # its CAN_DO never left: the server has had none of it since its CANT_DO
        if self.state is _WORKING:
            if not self._reset_due:  # (else the reset goes, and abilities are registered again)
                self._cant_do_due[name] = None
            return
        self._out += encode_req(PT.CANT_DO, text_bytes(name))
        self._withdrawn.add(name)
        if self.state is _GRABBING:
            self._unsettled[name] = self._echoes

    def withdrawn(self, function: str) -> bool:
        """Whether a job of ``function`` that comes now is one the server takes back: its
        CANT_DO is sent or due on this connection (and no CAN_DO since, registered again or
        not), and the server, that assigned the job before it read that, puts it back in its
        queue on reading it. The face lets such a job go (``taken_back``) rather than run or
        fail it, as it does one read ``given_back`` (``JobAssigned``)."""
        return function in self._withdrawn or function in self._cant_do_due

    def reset_abilities(self) -> None:
        """Unregister everything (RESET_ABILITIES) so the server hands us no more jobs.

        With a job in hand it is sent after the job's answer, followed by a CAN_DO for each
        ability added meanwhile: gearmand and farm put back in its queue a job whose worker
        resets, and drop its answer (a job calling ``unregister_all`` then ``register``)."""
        self._held_back.clear()  # their CAN_DOs never left: no more to send
        if self.state is _WORKING:
            self._reset_due = True
        elif self.state is not WorkerState.DISCONNECTED:
            self._out += encode_req(PT.RESET_ABILITIES)
            self._withdrawn.update(self.abilities)
            self._reset_answer = self.state is _GRABBING
            if self._reset_answer:
                for name in self.abilities:
                    self._unsettled[name] = self._echoes

    def _refused(self, code: str, text: str) -> str | None:
        """The function whose CAN_DO this ERROR answers: the first sent of those it fits."""
        for entry in self._refusable:
            if entry[:2] == (code, text):
                self._refusable.remove(entry)
                return entry[2]
        return None
