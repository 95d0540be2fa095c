"""Sans-I/O bookkeeping of one client connection to a job server: ``ClientSession``.

Every face of farm's client -- the blocking ``Client``, ``AsyncClient`` and
the ``Executor``'s pump -- keeps the state of a connection here, once: the face
only moves bytes between a socket and a session (the worker's counterpart is
``farm.protocol.worker.WorkerSession``).

    face ── submit()/get_status()/... ──► session ── data_to_send() ──► socket
    face ◄── events, task fields ──────── session ◄── receive(bytes) ── socket

The server answers the requests of one connection in order (JOB_CREATED for a
submit, STATUS_RES for GET_STATUS, ECHO_RES, OPTION_RES, or ERROR in place of
any of them), so one FIFO of requests awaiting a reply says which submit a
JOB_CREATED belongs to. WORK_* packets arrive later, keyed by handle.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from farm.errors import JobException, ServerError, ServerUnavailable
from farm.protocol.codec import (
    OPTION_FAIL_REASON,
    Packet,
    PacketType,
    ProtocolError,
    wire_int,
    wire_text,
)
from farm.protocol.copies import Copies
from farm.protocol.decoder import Decoder, Oversized
from farm.protocol.events import ServerErrorNotice
from farm.protocol.tasks import (
    WARNING_KEPT,
    JobCreated,
    JobData,
    JobEnded,
    JobProgress,
    JobStatus,
    JobWarning,
    Owner,
    Query,
    Question,
    Reply,
    StatusResult,
    Task,
    TaskEvent,
    TaskListener,
    failed_error,
    last_warning,
    lost_error,
    may_resubmit,
    not_again,
    timeout_error,
    unwritten,
)

__all__ = [
    "may_resubmit",
    "not_again",
    "Owner",
    "Reply",
    "lost_error",
    "timeout_error",
    "failed_error",
    "last_warning",
    "Task",
    "Query",
    "Question",
    "JobStatus",
    "StatusResult",
    "ClientSession",
    "JobCreated",
    "JobProgress",
    "JobData",
    "JobWarning",
    "JobEnded",
    "TaskEvent",
    "TaskListener",
    "ServerErrorNotice",
]

PT = PacketType


class ClientSession:
    """The client half of one connection: requests out, replies matched, tasks updated."""

    def __init__(self, server: str = "") -> None:
        self.server = server
        self._decoder = Decoder(allow_admin=False, skip_too_large=True, fail_reason=True)
        self._out = bytearray()
        self._awaiting: deque[Task[Any] | Query[Any]] = deque()  # requests in the order sent
        # The size of each request still in _out, oldest first: they are the tail of
        # _awaiting, so a face that holds them (AsyncClient while the transport is paused)
        # can hand them out whole and take one back (withdraw_queued).
        self._queued: deque[int] = deque()
        self._running: dict[str, list[Task[Any]]] = {}  # handle → foreground tasks on it
        # Which task hears each copy of a job's news (one per submit, given up or not).
        self._copies = Copies()
        self.closed = False
        # The server ended the connection (``connection_lost``), not this process (a fork's
        # child, a loop's end, close()): a handle created on it may name another job now.
        self.lost = False
        # The server answered a request with ERROR: it may close the connection next (farm
        # does after a packet over its --max-packet), so an idle one is not used again.
        self.refused = False
        self.fail_reason = False  # it answered OPTION_RES fail-reason (_on_fail)
        # Keyed by plain ints, as the decoder gives them (an IntEnum key costs an == each).
        handlers: dict[PT, Callable[[Packet, list[object]], None]] = {
            PT.JOB_CREATED: self._on_created,
            PT.WORK_COMPLETE: self._on_complete,
            PT.WORK_FAIL: self._on_fail,
            PT.WORK_EXCEPTION: self._on_exception,
            PT.WORK_STATUS: self._on_status,
            PT.WORK_DATA: self._on_data,
            PT.WORK_WARNING: self._on_warning,
            PT.STATUS_RES: self._on_query_reply,
            PT.STATUS_RES_UNIQUE: self._on_query_reply,
            PT.ECHO_RES: self._on_query_reply,
            PT.OPTION_RES: self._on_query_reply,
            PT.ERROR: self._on_error,
        }
        self._handlers = {int(ptype): handler for ptype, handler in handlers.items()}

    # -- requests --

    def data_to_send(self, limit: int | None = None) -> bytes:
        """What is queued for the wire since the last call (one sendall per batch): all of
        it, or with ``limit`` the oldest whole requests up to ``limit`` bytes (at least one,
        however large), the rest kept for a later call."""
        if limit is None or len(self._out) <= limit:
            out = bytes(self._out)
            self._out.clear()
            self._queued.clear()
            return out
        size = 0
        while self._queued and (size == 0 or size + self._queued[0] <= limit):
            size += self._queued.popleft()
        out = bytes(self._out[:size])
        del self._out[:size]  # from the front: CPython moves no bytes for it
        return out

    @property
    def queued(self) -> int:
        """How many bytes are queued for the wire (not yet taken by ``data_to_send``)."""
        return len(self._out)

    @property
    def busy(self) -> bool:
        """True while a reply or a foreground result is still owed to us."""
        return bool(self._awaiting or self._running)

    def holds(self, task: Task[Any]) -> bool:
        """Whether ``task`` was submitted here and is still owed its JOB_CREATED or its end."""
        return task in self._awaiting or task in self._running.get(task.handle or "", ())

    def option(self, name: str) -> Query[str]:
        return self.ask(Question.option(name))

    def echo(self, data: bytes) -> Query[bytes]:
        return self.ask(Question.echo(data))

    def get_status(self, handle: str) -> Query[StatusResult]:
        return self.ask(Question.status(handle))

    def get_status_unique(self, unique: str) -> Query[StatusResult]:
        return self.ask(Question.status_unique(unique))

    def ask(self, question: Question[Reply]) -> Query[Reply]:
        """Queue ``question``, its packet built; its reply lands in the Query returned."""
        self._check_open()
        query: Query[Reply] = Query(question.expect)
        self._enqueue(query, question.packet)
        return query

    def submit(self, task: Task[Any], packet: bytes | None = None) -> None:
        """Queue a submit for ``task``; the next JOB_CREATED (or ERROR) is its answer.
        ``packet``: ``task.packet()``, built by the caller beforehand: what fails there (a
        body past 4 GiB - 1, MemoryError) then fails before anything is queued."""
        self._check_open()
        self._enqueue(task, task.packet() if packet is None else packet)
        task.server = self.server
        task.handle, task.unwritten = None, False  # a resubmitted task gets the new server's handle
        task.warned = None  # and its warnings: the job the lost server ran is not this one
        task.attempts += 1

    def withdraw(self, task: Task[Any], unsent: bytearray) -> bool:
        """Take back the submit of ``task`` if no byte of it has left (the last request sent,
        its packet the end of ``unsent``, cut from it): no answer is owed, the server never
        sees it (a call timed out on a server that stopped reading ran when it woke)."""
        if not self._awaiting or self._awaiting[-1] is not task or self._out:
            return False
        packet = task.packet()
        if not unsent.endswith(packet):
            return False
        del unsent[-len(packet) :]
        self._awaiting.pop()
        return True

    def _enqueue(self, request: Task[Any] | Query[Any], packet: bytes) -> None:
        self._out += packet
        self._queued.append(len(packet))
        request.size = len(packet)
        self._awaiting.append(request)

    def withdraw_queued(self, request: Task[Any] | Query[Any]) -> bool:
        """Take back ``request`` if ``data_to_send`` has not handed it out yet: its packet is
        cut, no answer owed (AsyncClient, holding requests while the server does not read:
        one whose caller gave up is never sent)."""
        # The queued requests are the last len(_queued) of _awaiting, in order; looked at
        # from the oldest, as timeouts expire in the order their calls were made.
        offset = len(self._awaiting) - len(self._queued)
        for at in range(len(self._queued)):
            if self._awaiting[offset + at] is request:
                start = sum(itertools.islice(self._queued, at))
                del self._out[start : start + self._queued[at]]
                del self._queued[at]
                del self._awaiting[offset + at]
                return True
        return False

    def abandon(self, task: Task[Any]) -> None:
        """The caller stopped waiting: later packets for ``task`` are dropped."""
        task.abandoned = True
        if task.handle is not None:
            waiting = self._running.get(task.handle)
            if waiting and task in waiting:
                waiting.remove(task)
                if not waiting:
                    del self._running[task.handle]
                # Its copies still come: counted (not the task) until the job ends.
                self._copies.given_up(task.handle, task)
                task.data, task.owner = b"", None  # what the caller may hold on to holds none

    def _check_open(self) -> None:
        if self.closed:
            raise ServerUnavailable(f"connection to {self.server} is closed")

    # -- replies --

    def receive(self, data: bytes) -> list[object]:
        """Feed bytes from the server; return the events they complete, in order. Raises
        ProtocolError where the server breaks the protocol (the face closes, connection_lost)."""
        events: list[object] = []
        handlers = self._handlers
        for packet in self._decoder.feed(data):
            if not isinstance(packet, Packet):  # admin text is off for a client's decoder
                if type(packet) is not Oversized:
                    raise ProtocolError("a client does not expect admin text")
                self._on_oversized(packet, events)
                continue
            handler = handlers.get(packet.type)
            if handler is None:
                raise ProtocolError(f"a client does not expect {packet.name}")
            handler(packet, events)
        return events

    def _reply_to(self, packet: Packet) -> Task[Any] | Query[Any]:
        if not self._awaiting:
            raise ProtocolError(f"{packet.name} answers no request")
        return self._awaiting.popleft()

    def _on_created(self, packet: Packet, events: list[object]) -> None:
        task = self._reply_to(packet)
        if not isinstance(task, Task):
            raise ProtocolError(f"JOB_CREATED arrived where the answer to {task!r} was due")
        task.handle = handle = wire_text(packet.args[0])
        task.created_on = self  # its handle means something only while this connection lasts
        if task.background:
            task.done = True
        else:
            if not task.abandoned:  # given up before it was created: its copies come all
                self._running.setdefault(handle, []).append(task)  # the same (Copies)
            self._copies.created(handle, task)
        events.append(JobCreated(task=task))

    def _ended(self, handle: str) -> list[Task[Any]]:
        """The tasks a job's end is for: all of them at once. (A server sends it once per
        submit; the later copies find none.)"""
        self._copies.ended(handle)
        return self._running.pop(handle, [])

    def _hearers(self, handle: str) -> list[Task[Any]]:
        """The tasks a job's WORK_DATA, STATUS or WARNING is for: its one task, or for a job
        this connection joined twice (one unique), the one this copy is for (Copies)."""
        return self._copies.hearers(handle, self._running.get(handle, []))

    def _on_complete(self, packet: Packet, events: list[object]) -> None:
        for task in self._ended(wire_text(packet.args[0])):
            task.result = packet.args[1]
            task.done = True
            events.append(JobEnded(task=task))

    def _on_fail(self, packet: Packet, events: list[object]) -> None:
        # Whole: the handle, and where the server said (fail-reason) why it failed the job.
        raw, _, reason = packet.args[0].partition(b"\0")  # gearmand's stray NUL: none
        handle = wire_text(raw)
        why = reason.decode("utf-8", "replace") if self.fail_reason else ""
        for task in self._ended(handle):
            task.error = failed_error(task, handle, why)
            task.done = True
            events.append(JobEnded(task=task))

    def _on_exception(self, packet: Packet, events: list[object]) -> None:
        text = packet.args[1].decode("utf-8", "replace")
        for task in self._ended(wire_text(packet.args[0])):
            task.error = JobException(text)
            task.done = True
            events.append(JobEnded(task=task))

    def _on_oversized(self, packet: Oversized, events: list[object]) -> None:
        """A job's packet over what we read (gearmand's): the job fails; the rest go on."""
        if packet.handle is None:  # skip_too_large reads past only packets naming a job
            raise packet.error()
        handle = wire_text(packet.handle)
        for task in self._ended(handle):
            task.error = JobException(  # as farm's server fails a worker's answer too large
                f"job {handle} ({task.function}): its {PT(packet.ptype).name} of"
                f" {packet.size} bytes is over the {packet.limit} bytes farm's clients read"
            )
            task.done = True
            events.append(JobEnded(task=task))

    def _on_status(self, packet: Packet, events: list[object]) -> None:
        num, den = wire_int(packet.args[1]), wire_int(packet.args[2])
        for task in self._hearers(wire_text(packet.args[0])):
            events.append(JobProgress(task=task, numerator=num, denominator=den))

    def _on_data(self, packet: Packet, events: list[object]) -> None:
        for task in self._hearers(wire_text(packet.args[0])):
            task.streamed = True  # no resubmit now: may_resubmit
            events.append(JobData(task=task, data=packet.args[1]))

    def _on_warning(self, packet: Packet, events: list[object]) -> None:
        for task in self._hearers(wire_text(packet.args[0])):
            task.warned = packet.args[1][:WARNING_KEPT]  # why, if WORK_FAIL comes next
            events.append(JobWarning(task=task, data=packet.args[1]))

    def _on_query_reply(self, packet: Packet, events: list[object]) -> None:
        query = self._reply_to(packet)
        if not isinstance(query, Query) or query.expect != packet.type:
            raise ProtocolError(f"{packet.name} arrived where the answer to {query!r} was due")
        args = packet.args
        if packet.type in (PT.STATUS_RES, PT.STATUS_RES_UNIQUE):
            status = JobStatus(args[1] == b"1", args[2] == b"1", *map(wire_int, args[3:5]))
            query.result = StatusResult(wire_text(args[0]), status)
        elif packet.type == PT.ECHO_RES:
            query.result = args[0]
        else:
            query.result = wire_text(args[0])
            self.fail_reason = self.fail_reason or args[0] == OPTION_FAIL_REASON
        query.done = True

    def _on_error(self, packet: Packet, events: list[object]) -> None:
        code = packet.args[0].decode("utf-8", "replace")
        text = packet.args[1].decode("utf-8", "replace")
        if not self._awaiting:
            self.refused = True
            events.append(ServerErrorNotice(code=code, text=text))
            return
        request = self._awaiting.popleft()
        # An option it does not know (gearmand: farm's) says nothing of the connection.
        self.refused |= not (isinstance(request, Query) and request.expect == PT.OPTION_RES)
        function = request.function if isinstance(request, Task) else None
        request.error = ServerError(code, text, function)
        request.done = True
        if isinstance(request, Task):
            events.append(JobEnded(task=request))

    def connection_lost(
        self, why: str = "went away", unsent: int = 0, by_server: bool = True
    ) -> list[Task[Any]]:
        """The connection is gone: return the unfinished tasks (the face decides on retry).
        Pending queries fail with ServerUnavailable saying ``why`` (how the server went);
        tasks are left not done, ``unwritten`` those in the last ``unsent`` bytes handed out
        (the face's socket never took them) or still here. ``by_server``: the server's end,
        not ours (``lost``, which ``lost_since`` reads)."""
        self.closed = True
        self.lost = by_server
        unwritten(self._awaiting, unsent + len(self._out), self.server)
        lost: list[Task[Any]] = []
        for request in self._awaiting:
            if isinstance(request, Task):
                if not request.abandoned:
                    lost.append(request)
            else:
                request.error = ServerUnavailable(f"job server {self.server} {why}")
                request.done = True
        for tasks in self._running.values():
            lost.extend(t for t in tasks if t not in lost)
        self._awaiting.clear()
        self._out.clear()  # what had not left owes no answer now: it goes nowhere
        self._queued.clear()
        self._running.clear()
        self._copies.clear()
        return lost
