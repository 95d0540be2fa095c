"""Sans-I/O bookkeeping of a worker's connection: the grab/sleep/wake cycle as a table.

The blocking ``farm.Worker`` moves bytes between its sockets and one
``WorkerSession`` per server, as the client faces do with ``ClientSession``:

    worker ── connected()/grab()/complete() ──► session ── data_to_send() ──► socket
    worker ◄── JobAssigned, JobNotHeld, ServerErrorNotice ── session ◄── receive(bytes) ── socket
"""

from __future__ import annotations

from farm.protocol.codec import (
    OPTION_GIVE_BACK,
    OPTION_HELD_GRAB,
    OPTION_READ_ACCEPT,
    OPTION_REVOKE,
    OPTION_WORK_EXCEPTION,
    Packet,
    ProtocolError,
    encode_req,
    text_bytes,
)
from farm.protocol.decoder import Decoder
from farm.protocol.events import ServerErrorNotice
from farm.protocol.workerabilities import WorkerAbilities
from farm.protocol.workertable import (
    _ECHO_RES,
    _ERROR,
    _GRAB,
    _GRABBING,
    _JOB_ASSIGN,
    _JOB_ASSIGN_UNIQ,
    _JOB_REVOKE,
    _NO_JOB,
    _NOOP,
    _OPTION_RES,
    _PRE_SLEEP,
    _READY,
    _WORK_COMPLETE,
    _WORKER_TRANSITIONS,
    _WORKING,
    PT,
    JobAssigned,
    JobNotHeld,
    WorkerState,
)

__all__ = ["JobAssigned", "JobNotHeld", "WorkerState", "WorkerSession"]


class WorkerSession(WorkerAbilities):
    """The worker half of one connection: register, grab, sleep on PRE_SLEEP, wake on NOOP.

    ``abilities`` maps function name → timeout in seconds (None: no timeout).
    The face calls ``grab`` when it is free and the state is READY, runs the
    job of a ``JobAssigned`` event, then calls ``complete``/``fail``/``exception``.
    With ``held_grab`` (and a server that agrees) an idle grab stays GRABBING until
    a job comes, and the face must send what ``data_to_send`` holds (JOB_ACCEPT)
    before it runs a job.
    """

    def __init__(
        self,
        abilities: dict[str, float | None],
        client_id: str | None = None,
        *,
        held_grab: bool = False,
    ) -> None:
        self.abilities = abilities
        self.client_id = client_id
        self.state = WorkerState.DISCONNECTED
        self.handle: str | None = None  # the job in hand
        self._handle: bytes | None = None  # and as the wire has it
        # Held grab (docs/held-grab.md): asked for on each connection when ``held_grab``;
        # ``held`` once the server agreed (gearmand answers ERROR UNKNOWN_OPTION: the
        # standard PRE_SLEEP/NOOP dance then goes on as before).
        self.want_held = held_grab
        self.held = False
        # And read-accept (on a Unix socket; refused over TCP): a pushed job needs no
        # JOB_ACCEPT, the server sees that it was read. Options asked, answers to come:
        self.read_accept = False
        # Whether an exception may end a job as WORK_EXCEPTION (the server said so); else
        # it ends as WORK_FAIL, as python-gearman's worker ends it.
        self.exception_ok = False
        self._asking: list[bytes] = []
        self._pushed = False  # a NOOP announced that the next assignment was pushed
        # Where the last assignment's JOB_ACCEPT lies in _out (None: none was sent), for a
        # JOB_REVOKE read with it to take back exactly those bytes.
        self._accept_at: tuple[int, int] | None = None
        # The last job assigned, whose news and answer an ERROR JOB_NOT_FOUND answers (the
        # server answers in order: one read before the next assignment is this job's), and
        # whether that was said already (JobNotHeld: once per run, not once per packet).
        self._last_run: tuple[str, str] | None = None
        self._not_held_said = False
        self._forget_registrations()  # (farm.protocol.workerabilities)
        self._decoder = Decoder(allow_admin=False)
        self._out = bytearray()
        # Whether the last receive() read a packet other than an ERROR the server sent of
        # itself: a sign that it serves (an ERROR is none: one at its connection limit).
        self.answered = False

    @property
    def queued(self) -> int:
        """How many bytes are queued for the wire (not yet taken by ``data_to_send``)."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def connected(self, *, asleep: bool = False) -> None:
        """A fresh connection: identify, register every function, be ready to grab.

        ``asleep``: go to sleep (PRE_SLEEP) instead, to grab once the server wakes us -- it
        does at once when a job waits -- for a server that left our last grab unanswered
        (hung): a grab sent into it would hold the worker again."""
        self._decoder = Decoder(allow_admin=False)
        self._out.clear()
        self.handle = self._handle = None
        self._last_run = None
        self.held = self._pushed = self.read_accept = self.exception_ok = False
        self._forget_registrations()  # every ability is registered below, held back or not
        self._asking = [OPTION_WORK_EXCEPTION]
        if self.want_held:
            self._asking += [OPTION_HELD_GRAB, OPTION_READ_ACCEPT, OPTION_REVOKE]
        # give-back: what this session does anyway (remove_ability and reset_abilities wait
        # for the answer of a job in hand; the face lets a job that came after them go,
        # taken_back), said so that farm's server counts no retry for such a job.
        self._asking.append(OPTION_GIVE_BACK)
        for option in self._asking:
            self._out += encode_req(PT.OPTION_REQ, option)
        if self.client_id:
            self._out += encode_req(PT.SET_CLIENT_ID, self.client_id.encode())
        for name, timeout in self.abilities.items():
            self._out += self._can_do(name, timeout)
        self.state = WorkerState.READY
        if asleep:
            self._out += _PRE_SLEEP
            self.state = WorkerState.SLEEPING

    def grab(self) -> None:
        if self.state is not _READY:
            self._expect(_READY, "grab")
        if self._unsettled:  # the grab they were given up under was answered: none may come
            self._unsettled.clear()
        self._out += _GRAB
        self.state = _GRABBING

    def wake(self) -> None:
        """Asleep (PRE_SLEEP sent), be ready to grab again with no NOOP: the face's recheck
        of a long sleep (a NOOP that never comes). Awake, nothing changes."""
        if self.state is WorkerState.SLEEPING:
            self.state = _READY

    def receive(self, data: bytes) -> list[object]:
        """Feed bytes from the server; return JobAssigned / JobNotHeld / ServerErrorNotice
        events."""
        events: list[object] = []
        self.answered = False
        for packet in self._decoder.feed(data):
            if not isinstance(packet, Packet):  # admin text is off for a worker's decoder
                raise ProtocolError("a worker does not expect admin text")
            ptype, args = packet.type, packet.args
            if self._asking and (
                (ptype == _OPTION_RES and args[0] == self._asking[0])
                or (ptype == _ERROR and args[0].upper() == b"UNKNOWN_OPTION")  # Perl: lower
            ):
                option = self._asking.pop(0)
                if option == OPTION_WORK_EXCEPTION:
                    self.exception_ok = ptype == _OPTION_RES
                elif option == OPTION_HELD_GRAB:
                    self.held = ptype == _OPTION_RES
                elif option == OPTION_READ_ACCEPT:
                    self.read_accept = self.held and ptype == _OPTION_RES
                # (revoke: a server that agreed sends JOB_REVOKE; give-back: it counts no
                # retry for a job we let go; nothing to remember of either)
                self.answered = True  # an answer to our question, ERROR UNKNOWN_OPTION too
                continue
            if ptype == _ERROR:
                code, text = (a.decode("utf-8", "replace") for a in args)  # as a client reads it
                if code == "JOB_NOT_FOUND" and self._last_run is not None:
                    if not self._not_held_said:
                        self._not_held_said = True
                        ran, served = self._last_run
                        events.append(JobNotHeld(handle=ran, function=served, code=code, text=text))
                    continue
                function = self._refused(code, text) if self._refusable else None
                events.append(ServerErrorNotice(code=code, text=text, function=function))
                continue
            self.answered = True
            nxt = _WORKER_TRANSITIONS.get((self.state, ptype))
            if nxt is None:
                if ptype == _JOB_REVOKE:  # in no state's table: looked for only here
                    self._revoked(args[0], events)
                    continue
                if ptype == _ECHO_RES:  # likewise, in any state
                    self._settled(args[0])
                    continue
                raise ProtocolError(f"{packet.name} is unexpected while {self.state.value}")
            self.state = nxt
            if ptype == _JOB_ASSIGN_UNIQ:
                handle, func, unique, payload = args
                events.append(self._assigned(handle, func, unique, payload))
            elif ptype == _JOB_ASSIGN:
                handle, func, payload = args
                events.append(self._assigned(handle, func, b"", payload))
            elif ptype == _NO_JOB:
                if self.held and self._reset_answer:  # our RESET_ABILITIES ended the grab
                    self.state = _READY
                else:
                    # Else the standard dance, held or not: farm's server ends a held grab with
                    # NO_JOB where no job can come (`drain`, every CAN_DO refused); READY, the
                    # worker grabbed again at once, 20,000 times a second (docs/held-grab.md).
                    self._out += _PRE_SLEEP
                self._reset_answer = False
            elif ptype == _NOOP:
                self._pushed = self.held and nxt is _GRABBING
        return events

    def _assigned(self, handle: bytes, func: bytes, unique: bytes, data: bytes) -> JobAssigned:
        self._accept_at = None
        self._reset_answer = False  # the grab's answer: a reset read after it ends none
        if self._pushed:  # answered a held grab: accept it at once, before it runs
            self._pushed = False
            if not self.read_accept:  # else having read it is the acceptance
                start = len(self._out)
                self._out += encode_req(PT.JOB_ACCEPT, handle)
                self._accept_at = (start, len(self._out))
        self._handle = handle
        # Surrogateescape, as os.fsdecode: a client may send any bytes as the unique key (PHP's
        # GearmanClient sends a raw digest as it is), and the exact bytes stay recoverable
        # (``unique.encode("utf-8", "surrogateescape")``); a strict decode raised out of
        # the worker's loop and killed it, for every worker the job went to next.
        self.handle = handle.decode("utf-8", "surrogateescape")
        function = func.decode("utf-8", "surrogateescape")
        self._last_run, self._not_held_said = (self.handle, function), False
        return JobAssigned(
            handle=self.handle,
            function=function,
            unique=unique.decode("utf-8", "surrogateescape"),
            data=data,
            given_back=bool(self._withdrawn) and function in self._withdrawn,
        )

    def _revoked(self, handle: bytes, events: list[object]) -> None:
        """JOB_REVOKE: the server took back the job ``handle`` pushed to us, as we had not
        accepted it within its --wake-deadline (stopped, or starved of CPU), and gave it to
        another worker. Assigned in this same read, it has not run: it is dropped, with its
        JOB_ACCEPT, and the connection grabs again, as the server now expects. A job
        assigned in an earlier read has run or runs (the server drops its answers), and
        one not in hand is no news: both are ignored (docs/held-grab.md, revoke)."""
        if self.state is not _WORKING or handle != self._handle:
            return
        # In hand, the newest assignment of this read is this job's, if it came in it.
        at = next((i for i in reversed(range(len(events))) if type(events[i]) is JobAssigned), -1)
        if at < 0:
            return
        del events[at]
        if self._accept_at is not None:  # sent in this read: _out only grew after it
            start, end = self._accept_at
            del self._out[start:end]
            self._accept_at = None
        self._job_ended()

    def _expect(self, state: WorkerState, action: str) -> None:
        if self.state is not state:
            raise ProtocolError(f"cannot {action} while {self.state.value}", fatal=False)

    def _in_hand(self, action: str) -> bytes:
        if self.state is not _WORKING:
            self._expect(_WORKING, action)
        handle = self._handle
        assert handle is not None, "WORKING always has a job in hand"
        return handle

    def send_status(self, numerator: int, denominator: int) -> None:
        handle = self._in_hand("send status")
        self._out += encode_req(PT.WORK_STATUS, handle, b"%d" % numerator, b"%d" % denominator)

    def send_data(self, data: bytes) -> None:
        self._out += encode_req(PT.WORK_DATA, self._in_hand("send data"), data)

    def send_warning(self, data: bytes) -> None:
        self._out += encode_req(PT.WORK_WARNING, self._in_hand("send a warning"), data)

    def complete(self, result: bytes) -> None:
        self._out += encode_req(_WORK_COMPLETE, self._in_hand("complete"), result)
        self._job_ended()

    def fail(self) -> None:
        self._out += encode_req(PT.WORK_FAIL, self._in_hand("fail"))
        self._job_ended()

    def exception(self, text: str) -> None:
        """End the job with WORK_EXCEPTION ``text`` (it ends the job on gearmand and farm
        alike; no WORK_FAIL follows) where the server said it hands it on safely
        (``exception_ok``), else with WORK_FAIL: through gearmand, clients that did not ask
        for exceptions got a malformed WORK_FAIL (the gearman CLI hung, Perl's client died)."""
        if not self.exception_ok:
            self.fail()
            return
        # backslashreplace: a message may hold surrogates (os.fsdecode's, a unique key's)
        payload = text.encode("utf-8", "backslashreplace")
        self._out += encode_req(PT.WORK_EXCEPTION, self._in_hand("raise"), payload)
        self._job_ended()

    def taken_back(self) -> None:
        """The job in hand came after our RESET_ABILITIES (or its function's CANT_DO), which
        put it back on the server (farm's, told give-back, with no retry counted): nothing
        is owed for it, and the connection may grab again. (Left "working", it never
        grabbed again, even for a function registered later.)"""
        self._in_hand("let a job go")
        self._job_ended()

    def _job_ended(self) -> None:
        self.handle = self._handle = None
        self.state = _READY
        if self._reset_due:
            self._reset_due = False
            self._cant_do_due.clear()
            self._out += encode_req(PT.RESET_ABILITIES)
            for name, timeout in self.abilities.items():
                self._out += self._can_do(name, timeout)
                self._withdrawn.discard(name)  # (with no grab out: at once, no echo)
        elif self._cant_do_due:
            for name in self._cant_do_due:
                self._out += encode_req(PT.CANT_DO, text_bytes(name))
            self._withdrawn.update(self._cant_do_due)
            self._cant_do_due.clear()

    def connection_lost(self) -> None:
        self.state = WorkerState.DISCONNECTED
        self.handle = self._handle = None
        self._last_run = None
        self._out.clear()
