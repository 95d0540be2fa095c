"""What a client connection asks (submits of every kind, status queries) and is told
(its jobs' progress and ends, ``job_progress`` and ``job_ended``).

A mixin of :class:`farm.server.connection.Connection`, split off along the
client's side of the wire (the worker's is farm.server.workerside). Arguments
are checked against the wire's limits here; the job model decides the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from farm import protocol as p
from farm.logrepeats import Brief
from farm.protocol import RESERVED, encode_res, frame_res
from farm.protocol import PacketType as T
from farm.protocol.kinds import SUBMIT_KINDS, Priority, SubmitKind
from farm.server.hub import HELD_READ_LIMIT, LAZY_CREATED_MAX, HeldReply, Hub
from farm.server.jobs import Job, JobServer, Outcome, Progress, QueueFull
from farm.server.store import StoreError
from farm.server.workerside import error

#: QUEUE_ERRORs of full queues: one log line each 10 s at most, as a flood would send them.
refusals = Brief(logging.getLogger("farm.server"))

__all__ = ["ClientSide", "EPOCH", "REDUCE", "REDUCE_BG", "LAZY_CREATED_MAX"]

#: SUBMIT_JOB_EPOCH and the reduce submits: not in the plain table, same meaning.
EPOCH = SubmitKind(Priority.NORMAL, background=True)
REDUCE = SubmitKind(Priority.NORMAL, background=False)
REDUCE_BG = SubmitKind(Priority.NORMAL, background=True)

# Plain ints and module names for the hot path, as in farm.server.workerside.
_JOB_CREATED = int(T.JOB_CREATED)
_COMPLETE, _EXCEPTION = Outcome.COMPLETE, Outcome.EXCEPTION
_WORK_COMPLETE, _WORK_EXCEPTION, _WORK_FAIL = (
    int(T.WORK_COMPLETE),
    int(T.WORK_EXCEPTION),
    int(T.WORK_FAIL),
)
#: What a job's news is called on the client's side of the wire.
PROGRESS_PACKET: dict[Progress, int] = {
    Progress.STATUS: int(T.WORK_STATUS),
    Progress.DATA: int(T.WORK_DATA),
    Progress.WARNING: int(T.WORK_WARNING),
}
_KIND_OF: dict[int, SubmitKind] = {int(ptype): kind for ptype, kind in SUBMIT_KINDS.items()}
_LOW = Priority.LOW


class ClientSide:
    """The client half of a Connection (see the module docstring)."""

    # The connection's, read and written here (declared for the type checker).
    hub: Hub
    jobs: JobServer
    send: Callable[[bytes], None]
    function_ok: Callable[..., bool]
    out: bytearray
    dirty: bool
    closed: bool
    held: list[HeldReply] | None
    held_bytes: int  # what the held replies carry after them
    held_full: bool  # past HELD_READ_LIMIT: not read until they leave
    update_reading: Callable[[], None]
    held_gone: Callable[[int], None]
    lingering: bool  # closed, its transport open until its held replies leave
    transport: asyncio.Transport | None
    lazy_created: bool
    lazy_waiting: bool  # has a deadline in hub.lazy
    exceptions: bool  # OPTION_REQ exceptions: WORK_EXCEPTION, not WORK_FAIL
    fail_reason: bool  # OPTION_REQ fail-reason: the server's own failures say why
    fd: int
    ip: str
    tcp: bool  # a TCP peer: its jobs count in the TCP share of --max-queued-bytes
    close: Callable[[], None]
    detach: Callable[[], None]
    finish_backlog: Callable[[], None]
    answering: bool
    hung_up: bool

    def on_submit(
        self,
        kind: SubmitKind,
        function: bytes,
        unique: bytes,
        data: bytes,
        *,
        reducer: bytes | None = None,
        when: float = 0.0,
    ) -> None:
        if len(unique) > p.MAX_UNIQUE:
            self.send(error("ARGUMENT_TOO_LARGE", "Unique value too large"))
            return
        known = self.jobs.functions  # the common case, checked here without a call
        if function not in known and not self.function_ok(function, kind.priority):
            return
        if reducer is not None and (problem := p.name_problem(reducer)) is not None:
            # Its name only: a reducer gets no entry, so --max-functions is not its to
            # check (function_ok's room_for_new freed an idle entry for nothing, maybe
            # this submit's own function's).
            code, why = problem
            self.send(error(code, f"reducer {why}"))
            return
        background, priority = kind.background, kind.priority
        if self.tcp and function.startswith(RESERVED):
            # The Executor's functions: any local user may submit to them over TCP, and the
            # workers refuse such unsigned jobs only once they reach them. Queued high, a
            # flood of them held the farm's own callers (on the Unix socket) back for
            # minutes, so TCP's jobs for them queue low, behind every one of those.
            priority = _LOW
        try:
            job = self.jobs.submit(
                None if background else self,  # type: ignore[arg-type]  # a Connection: a Peer
                function,
                unique,
                data,
                priority=priority,
                background=background,
                reducer=reducer,
                when=when,
                tcp=self.tcp,
            )
        except QueueFull as full:
            # gearmand's words to the client; why, in the log (a full byte budget looked
            # like a maxqueue nobody set)
            refusals("QUEUE_ERROR to fd %d (%s): %s", self.fd, self.ip, full)
            self.send(error("QUEUE_ERROR", "Job queue is full"))
            return
        except StoreError as exc:
            self.send(error("QUEUE_ERROR", str(exc)))
            return
        if background and job.store_id and self.hub.must_hold(job):
            self.hold_created(job.handle, priority, job.store_id)
        elif self.lazy_created and not background:
            self.send_lazily(frame_res(_JOB_CREATED, job.handle))
        else:
            self.send(frame_res(_JOB_CREATED, job.handle))

    def eof_received(self) -> bool | None:
        """The peer sends no more (a half-close: ``nc -N``, a script's shutdown(SHUT_WR)
        after its submits). asyncio closes the transport at once, which dropped the
        JOB_CREATEDs still held for the store's commit: the job was stored and ran, and
        its client, told nothing, took the submit as failed. So with replies held the
        connection closes as the server's own close does, lingering until they leave.
        Over TLS it cannot: uvloop's TLS layer shuts the connection down whatever this
        answers (and warns if it answers True), so the replies still held are lost there
        while their jobs run, as docs/server.md says."""
        self.finish_backlog()  # first: its background submits may hold replies too
        if self.answering:  # an admin reply is being made (backup): AdminSide.answered
            self.hung_up = True
            return True
        if self.held is None:
            return None  # closed now, as asyncio does
        if not self.closed:
            self.close()
            self.detach()  # as refuse(): what it held goes back to the queues now
        tls = self.transport is not None and self.transport.get_extra_info("sslcontext")
        return None if tls else True  # open for writing: release_held closes it

    def hold_created(self, handle: bytes, priority: int, row: int) -> None:
        """JOB_CREATED of a submit (at ``priority``) whose job's store ``row`` is not
        committed yet: ``release_held`` sends it."""
        if self.held is None:
            self.held = []
            self.hub.holding.append(self)  # type: ignore[arg-type]  # a Connection, a Writer
        self.held.append(HeldReply(handle, priority, row))

    def when_sent(self, start: Callable[[], None]) -> None:
        """Call ``start`` once what was just sent has left: now, or when the held reply it
        waits behind is released. A deadline for the peer's answer (a pushed job's
        --wake-deadline, an assigned job's CAN_DO_TIMEOUT) runs from then: from the send, a
        commit slower than it failed or took back a job the worker had not been sent, and
        the worker ran it all the same once it left."""
        if self.held is None:
            start()
        else:
            reply = self.held[-1]
            if reply.starts is None:
                reply.starts = []
            reply.starts.append(start)

    def release_held(
        self, failed: frozenset[bytes], refusal_text: str, below: int
    ) -> list[tuple[bytes, int]]:
        held = self.held
        if held is None:
            return []
        refused = []
        if failed:  # marked now (its job is unstored next), sent when its turn comes
            for reply in held:
                if reply.row < below and reply.refusal is None and reply.handle in failed:
                    reply.refusal = refusal_text
                    refused.append((reply.handle, reply.priority))
        done = 0
        while done < len(held) and held[done].row < below:
            done += 1
        if not done:
            return refused
        released = held[:done]
        del held[:done]
        if not held:
            self.held = None
        self.held_bytes = sum(len(reply.after) for reply in held)  # 0 but for two batches
        self.held_gone(self.held_bytes)
        if self.held_full and self.held_bytes <= HELD_READ_LIMIT:
            self.held_full = False
            self.update_reading()  # read again (not when closed: it checks)
        if self.closed and not self.lingering:
            return refused  # refused all the same: no job was made for them
        for reply in released:
            if reply.refusal is None:
                self.out += frame_res(_JOB_CREATED, reply.handle)
            else:
                self.out += error("QUEUE_ERROR", reply.refusal)
            self.out += reply.after
            for start in reply.starts or ():
                start()  # what was sent behind it has left: its deadlines run from now
        if self.closed:  # closed with these owed (Connection.close): written, then closed
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(bytes(self.out))
                if self.held is None:
                    transport.close()
            self.out.clear()
            return refused
        if not self.dirty:
            self.dirty = True
            self.hub.dirty.append(self)  # type: ignore[arg-type]  # a Connection, a Writer
        return refused

    def send_lazily(self, data: bytes) -> None:
        """Queue ``data`` without asking for a write of its own: it leaves with whatever
        this connection is sent next (a sequential call's JOB_CREATED rides with its
        WORK_COMPLETE: one write and one wake-up of the client, not two), and at the
        latest after LAZY_CREATED_MAX (docs/held-grab.md, "lazy-created")."""
        if self.closed:
            return
        if self.held is not None or self.dirty:
            self.send(data)  # behind held replies, or a write is due anyway
            return
        self.out += data
        if not self.lazy_waiting:
            self.lazy_waiting = True
            self.hub.lazy.add(self, None)  # type: ignore[arg-type]  # a Connection, a Writer

    def lazy_due(self) -> None:
        self.lazy_waiting = False
        if self.out and not self.dirty and not self.closed:
            self.dirty = True
            self.hub.dirty.append(self)  # type: ignore[arg-type]  # a Connection, a Writer

    def submit(self, args: tuple[bytes, ...], ptype: int) -> None:
        function, unique, data = args
        self.on_submit(_KIND_OF[ptype], function, unique, data)

    def submit_epoch(self, args: tuple[bytes, ...]) -> None:
        function, unique, epoch, data = args
        try:
            seconds = int(epoch)  # clients send whole seconds; refuses nan and inf
        except ValueError:
            self.send(error("INVALID_COMMAND", "epoch is not a number"))
            return
        if not 0 <= seconds <= p.MAX_EPOCH:
            # ERROR, as for no number: a close failed the client's other jobs on this
            # connection for one bad submit (gearmand takes it: -5 runs at once).
            self.send(error("INVALID_COMMAND", "epoch is out of range"))
            return
        if self.tcp and function.startswith(RESERVED):
            # The Executor never schedules a call, and a signed call expires in hours: over
            # TCP this is another user's job held (and stored) up to years, counted against
            # the function's max_queue all the while.
            self.send(error("PERMISSION_DENIED", "farm.* jobs are not scheduled over TCP"))
            return
        self.on_submit(EPOCH, function, unique, data, when=float(seconds))

    def submit_reduce(self, args: tuple[bytes, ...], ptype: int) -> None:
        function, unique, reducer, _aggregator, data = args
        kind = REDUCE_BG if ptype == T.SUBMIT_REDUCE_JOB_BACKGROUND else REDUCE
        self.on_submit(kind, function, unique, data, reducer=reducer)

    def submit_sched(self, args: tuple[bytes, ...]) -> None:
        self.send(
            error("INVALID_COMMAND", "SUBMIT_JOB_SCHED is not supported; use SUBMIT_JOB_EPOCH")
        )

    def get_status(self, args: tuple[bytes, ...]) -> None:
        handle = args[0]
        job = self.jobs.jobs.get(handle)
        # A TCP peer (any local user) is told nothing of the farm's own callers' jobs, as by
        # their unique key (get_status_unique): `show jobs` lists their handles over TCP.
        # The other way needs no such rule: a handle is the server's, no caller chooses one.
        if job is None or (job.local and self.tcp):
            self.send(encode_res(T.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
        else:
            running = b"1" if job.worker is not None else b"0"
            self.send(
                encode_res(T.STATUS_RES, handle, b"1", running, job.numerator, job.denominator)
            )

    def get_status_unique(self, args: tuple[bytes, ...]) -> None:
        unique = args[0]
        same = self.jobs.by_unique.get(unique)
        # Its own side's jobs only, as a key joins only its own side's submits: a TCP peer
        # (any local user) read the running state, progress and callers of the farm's own.
        job = next((j for j in reversed(same) if j.local != self.tcp), None) if same else None
        if job is None:
            self.send(encode_res(T.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0"))
        else:
            running = b"1" if job.worker is not None else b"0"
            count = str(sum(job.clients.values())).encode()
            self.send(
                encode_res(
                    T.STATUS_RES_UNIQUE,
                    unique,
                    b"1",
                    running,
                    job.numerator,
                    job.denominator,
                    count,
                )
            )

    # -- what the job model tells this client -------------------------------------

    def job_progress(self, job: Job, kind: Progress, fields: tuple[bytes, ...]) -> None:
        self.send(frame_res(PROGRESS_PACKET[kind], job.handle, *fields))

    def job_ended(self, job: Job, outcome: Outcome, data: bytes) -> None:
        if outcome is _COMPLETE:
            self.send(frame_res(_WORK_COMPLETE, job.handle, data))
        elif outcome is _EXCEPTION and self.exceptions:
            self.send(frame_res(_WORK_EXCEPTION, job.handle, data))
        elif data and outcome is not _EXCEPTION and self.fail_reason:
            # A failure the server made, and why (a worker's WORK_FAIL carries no data):
            # after the handle, for a client that asked (docs/held-grab.md, fail-reason).
            self.send(frame_res(_WORK_FAIL, job.handle, data))
        else:  # a failure, or an exception for a client that did not ask for them
            self.send(frame_res(_WORK_FAIL, job.handle))
