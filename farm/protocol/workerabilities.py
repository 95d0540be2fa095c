"""What a worker's connection serves: CAN_DO, CANT_DO and RESET_ABILITIES (sent after the
answer of a job in hand), and which jobs the server gives back for them.

A mixin of :class:`farm.protocol.worker.WorkerSession` (split off along this seam: the
grab/sleep/wake cycle and a job's answers stay there). A function given up (CANT_DO, or all
of them in RESET_ABILITIES) while a grab is out may still come back as that grab's answer:
the server assigned the job before it read the CANT_DO, and gives it back on reading it
(docs/held-grab.md, give-back); such a job is not run (``withdrawn``).
"""

from __future__ import annotations

from collections import deque

from farm.protocol.codec import encode_req, name_problem, text_bytes
from farm.protocol.workertable import (
    _ABSENT,
    _GRABBING,
    _READY,
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
        """A new session, or a fresh connection: nothing given up, nothing due."""
        self._reset_due = False  # RESET_ABILITIES asked for mid-job: sent after its answer
        # Our RESET_ABILITIES went while a grab was out: the NO_JOB that ends a held grab is
        # its answer, after which nothing is left to sleep for (see receive's NO_JOB).
        self._reset_answer = False
        self._cant_do_due: dict[str, None] = {}  # CANT_DOs asked for mid-job, in order: likewise
        # Names sent as CANT_DO on this connection, not registered again since (see withdrawn)
        self._withdrawn: set[str] = set()
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
        self.abilities[name] = timeout
        self._cant_do_due.pop(name, None)
        self._withdrawn.discard(name)
        if self.state is not WorkerState.DISCONNECTED and not self._reset_due:
            self._out += self._can_do(name, timeout)  # (else it follows the reset, below)
        if self.state is WorkerState.SLEEPING:
            # Its jobs may wait already, and a server (gearmand) wakes a sleeper only for a
            # job submitted later: look, as if woken.
            self.state = _READY

    def remove_ability(self, name: str) -> None:
        """Unregister one function (CANT_DO); one not among ``abilities`` is ignored. With a
        job in hand it is sent after the job's answer: gearmand and farm put back in its
        queue a job whose worker gives up its function, and drop its answer."""
        if self.abilities.pop(name, _ABSENT) is _ABSENT or self.state is WorkerState.DISCONNECTED:
            return
        if self.state is _WORKING:
            if not self._reset_due:  # (else the reset goes, and abilities are registered again)
                self._cant_do_due[name] = None
            return
        self._out += encode_req(PT.CANT_DO, text_bytes(name))
        self._withdrawn.add(name)

    def withdrawn(self, function: str) -> bool:
        """Whether a job of ``function`` that comes now is one the server takes back: its
        CANT_DO is sent or due on this connection (and no CAN_DO since), and the server, that
        assigned the job before it read that, puts it back in its queue on reading it. The
        face lets such a job go (``taken_back``) rather than run or fail it."""
        return function in self._withdrawn or function in self._cant_do_due

    def reset_abilities(self) -> None:
        """Unregister everything (RESET_ABILITIES) so the server hands us no more jobs.

        With a job in hand it is sent after the job's answer, followed by a CAN_DO for each
        ability added meanwhile: gearmand and farm put back in its queue a job whose worker
        resets, and drop its answer (a job calling ``unregister_all`` then ``register``)."""
        if self.state is _WORKING:
            self._reset_due = True
        elif self.state is not WorkerState.DISCONNECTED:
            self._out += encode_req(PT.RESET_ABILITIES)
            self._reset_answer = self.state is _GRABBING

    def _refused(self, code: str, text: str) -> str | None:
        """The function whose CAN_DO this ERROR answers: the first sent of those it fits."""
        for entry in self._refusable:
            if entry[:2] == (code, text):
                self._refusable.remove(entry)
                return entry[2]
        return None
