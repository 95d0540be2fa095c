"""What a worker connection says and is told: abilities, grabs (plain and held), pushes,
and the worker's news of its job (``work_update``: progress, or the job's end).

A mixin of :class:`farm.server.connection.Connection`, split off along the
worker's side of the wire; the connection keeps its buffers and back-pressure,
the clients' requests are in farm.server.clientside. Held grab
(``OPTION_REQ held-grab``) is specified in docs/held-grab.md.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sys
import termios
from collections.abc import Callable
from functools import partial

from farm import protocol as p
from farm.protocol import RESERVED, encode_res, frame_res
from farm.protocol import PacketType as T
from farm.server.hub import HeldReply, Hub, Writer
from farm.server.jobs import Job, JobServer, Outcome, Progress
from farm.server.queues import Expiry, Peer

__all__ = ["WorkerSide", "error", "NO_JOB", "NOOP"]

log = logging.getLogger("farm.server")

NO_JOB = encode_res(T.NO_JOB)
NOOP = encode_res(T.NOOP)
#: What a CAN_DO_TIMEOUT's number may have around it: blanks, as a regex's \s matched them.
_BLANKS = b" \t\n\v\f\r"
_DIGITS = b"0123456789"

# Plain ints and module names for the hot path: reading a member off an enum class costs
# about 100 ns on Python 3.11, several times a job.
_GRAB_JOB, _GRAB_JOB_ALL = int(T.GRAB_JOB), int(T.GRAB_JOB_ALL)
_JOB_ASSIGN, _JOB_ASSIGN_UNIQ = int(T.JOB_ASSIGN), int(T.JOB_ASSIGN_UNIQ)
_WORK_FAIL, _WORK_EXCEPTION = int(T.WORK_FAIL), int(T.WORK_EXCEPTION)

#: What a worker's news means to the job model: progress, or the job's end.
PROGRESS_KIND: dict[int, Progress] = {
    int(T.WORK_STATUS): Progress.STATUS,
    int(T.WORK_DATA): Progress.DATA,
    int(T.WORK_WARNING): Progress.WARNING,
}
OUTCOME: dict[int, Outcome] = {
    int(T.WORK_COMPLETE): Outcome.COMPLETE,
    int(T.WORK_FAIL): Outcome.FAIL,
    int(T.WORK_EXCEPTION): Outcome.EXCEPTION,
}
# gearmand's texts, so tools that match on them keep working.
NOT_FOUND_DEFAULT = "Job given in work result not found"
NOT_FOUND_TEXT: dict[int, str] = {
    T.WORK_DATA: "Job does not exist on server",
    T.WORK_WARNING: "Job does not exist on server",
    T.WORK_EXCEPTION: "An exception was received for a job that does not exist",
}


def error(code: str, text: str) -> bytes:
    return encode_res(T.ERROR, code.encode(), text.encode())


def timeout_number(raw: bytes) -> bytes | None:
    """A CAN_DO_TIMEOUT's number, its sign kept, or None where the field is none: whole, or
    with a fraction that is dropped, as gearmand's atoi drops it (Perl's
    `register_function(f => 2.5 => sub)` sends `2.5`; refused, the Perl worker died on the
    ERROR at its first grab), blanks around it allowed.

    A scan, not a regex (queues.status_number's reason): the regex backtracked through a
    long field, and 60 MB of digits ending in a letter held the server for four seconds.
    Each step here is one pass in C."""
    body = raw.strip(_BLANKS)
    unsigned = body[1:] if body[:1] in (b"+", b"-") else body
    whole = len(unsigned) - len(unsigned.lstrip(_DIGITS))
    rest = unsigned[whole:]
    if whole == 0 or (rest and (rest[:1] != b"." or rest[1:].lstrip(_DIGITS))):
        return None
    return body[: len(body) - len(rest)]


class WorkerSide:
    """The worker half of a Connection (see the module docstring)."""

    # The connection's, read and written here (declared for the type checker).
    hub: Hub
    jobs: JobServer
    abilities: dict[bytes, float]
    closed: bool
    fd: int
    peer_uid: int | None
    tcp: bool
    draining: bool
    sleeping: bool
    # It asked for a job (a grab, PRE_SLEEP) since it last registered a new function: what it
    # registered is what it serves, not a look between two CAN_DOs (admin `peers`).
    awaits_jobs: bool
    may_hold_grab: bool
    held_grab: int  # the grab packet held (0: none)
    pushed: Job | None  # pushed to a held grab, not accepted yet
    held: list[HeldReply] | None  # replies held for the store's commit (ClientSide)
    when_sent: Callable[[Callable[[], None]], None]
    running: dict[bytes, Job]
    read_accept: bool  # negotiated: having read a pushed job accepts it
    revoke: bool  # negotiated: a push taken back is followed by JOB_REVOKE
    heard_since_push: bool  # a packet came from the worker after the push
    expired: dict[bytes, int]  # handle -> times the job timed out or was taken back here
    excepted: bytes | None  # the last job this worker ended with WORK_EXCEPTION
    jobs_done: int
    transport: asyncio.Transport | None
    send: Callable[[bytes], None]
    refuse: Callable[..., None]
    function_ok: Callable[..., bool]
    wait_for_readers: Callable[[Job], None]
    catch_up: Callable[[], None]

    def writer(self) -> Writer:
        return self  # type: ignore[return-value]  # a Connection, which is one

    def peer(self) -> Peer:
        return self  # type: ignore[return-value]  # a Connection, which is one

    # Every job's (wake, push, accepted, grab): itself, not writer()/peer(), calls for mypy.
    def wake(self) -> None:
        if self.held_grab:
            self.hub.push_soon(self)  # type: ignore[arg-type]  # a Connection: a Writer
        else:
            self.send(NOOP)

    def push(self) -> None:
        """Answer the held grab (NOOP, then the assignment, in one write) with the best job
        now, and give the worker --wake-deadline to accept it (JOB_ACCEPT) before it is taken
        back: a stopped or hung worker must not sit on a job others could run."""
        ptype, self.held_grab = self.held_grab, 0
        if not ptype or self.closed:
            return
        job = self.jobs.grab(self)  # type: ignore[arg-type]  # a Connection: a Peer
        if job is None:  # another worker took it first: keep holding
            self.hold_grab(ptype)
            return
        self.send(NOOP)
        self.assign(job, ptype)
        self.pushed = job
        self.heard_since_push = False
        if self.held is None:  # it leaves now: the deadline runs from now (every job's case)
            self.hub.unaccepted.add(self, job)  # type: ignore[arg-type]  # a Connection
        else:
            self.when_sent(partial(self._push_sent, job))  # a lambda made cells, every push

    def _push_sent(self, job: Job) -> None:
        """The pushed job has left (ClientSide.when_sent): it must be accepted in time."""
        if self.pushed is job and not self.closed:
            self.hub.unaccepted.add(self.writer(), job)

    def accepted(self) -> None:
        """The pushed job was accepted (JOB_ACCEPT, or news of it): no deadline left."""
        self.pushed = None
        self.hub.unaccepted.discard(self)  # type: ignore[arg-type]  # a Connection: a Writer

    def read_everything(self) -> bool:
        """Whether the worker has read every byte sent to it: nothing waits in our
        transport, nor in the socket (SIOCOUTQ: on a Unix socket, bytes the peer has not
        read yet)."""
        transport = self.transport
        if transport is None or transport.get_write_buffer_size():
            return False
        try:
            unread = fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return False
        return int.from_bytes(unread, sys.byteorder) == 0

    def hold_grab(self, ptype: int) -> None:
        """Hold a grab that ``jobs.grab`` has just answered with no job, in this call."""
        self.held_grab = ptype
        self.jobs.sleep(self)  # type: ignore[arg-type]  # a Connection: a Peer

    def not_accepted(self, job: Job) -> None:
        self.catch_up()  # its JOB_ACCEPT may be read already, behind other packets
        if self.pushed is not job or self.closed:
            return
        self.pushed = None
        if job.worker is not self.peer():  # given back meanwhile (CANT_DO, give-back)
            return
        if self.read_accept and (self.heard_since_push or self.read_everything()):
            # It took the job off the socket, or it still talks to us (so what we sent
            # after the push, such as an ECHO_RES, may wait unread behind it while it
            # runs the job): it runs it (docs/held-grab.md).
            return
        log.info(
            "fd %d: pushed job %s not accepted within %gs; it goes to another worker",
            self.fd,
            job.handle.decode(),
            self.hub.unaccepted.length,
        )
        if self.jobs.take_back(self.peer(), job) and self.revoke:
            # Behind the assignment it has not read: reading both, it lets the job go
            # rather than run it a second time (docs/held-grab.md, revoke).
            self.send(encode_res(T.JOB_REVOKE, job.handle))

    def accept(self, args: tuple[bytes, ...]) -> None:
        # From a peer that did not negotiate held grab, JOB_ACCEPT is an unknown type to
        # its decoder (Decoder.held_grab_negotiated): it closed the connection before here.
        if self.pushed is not None and self.pushed.handle == args[0]:
            self.accepted()

    def reset_abilities(self, args: tuple[bytes, ...]) -> None:
        self.jobs.reset_abilities(self.peer())
        if self.held_grab:  # nothing left to wait for: the held grab ends as a plain one
            self.held_grab = 0
            self.sleeping = False  # with no abilities left it is in no function's sleepers
            self.send(NO_JOB)

    def pre_sleep(self, args: tuple[bytes, ...]) -> None:
        self.awaits_jobs = True
        self.jobs.pre_sleep(self.peer())

    def grab(self, args: tuple[bytes, ...], ptype: int) -> None:
        self.awaits_jobs = True
        if self.held_grab and self.sleeping and self.abilities:
            # A grab held already, asleep on all its functions: no job came for it (push()
            # answers the first that does), so this one takes its place as it is. Woken and
            # put to sleep again for each, 60 KB of grabs from a local user's connection of
            # 4,096 functions held the server's loop for 25 s.
            self.held_grab = ptype
            return
        job = self.jobs.grab(self)  # type: ignore[arg-type]  # a Connection: a Peer
        if job is not None:
            self.assign(job, ptype)
        elif self.may_hold_grab and self.abilities and not self.draining:
            self.hold_grab(ptype)  # answered by push() when a job comes
        else:
            self.send(NO_JOB)

    def drain(self) -> None:
        """farm's admin ``drain``: no job for this connection from now on; a held grab
        ends as a plain one would (NO_JOB), and the job in hand runs to its end."""
        self.jobs.drain(self.peer())
        if self.held_grab:
            self.held_grab = 0
            self.send(NO_JOB)

    def assign(self, job: Job, ptype: int) -> None:
        if ptype == _GRAB_JOB:
            self.send(frame_res(_JOB_ASSIGN, job.handle, job.function, job.data))
        elif ptype == _GRAB_JOB_ALL and job.reducer is not None:
            self.send(
                encode_res(
                    T.JOB_ASSIGN_ALL, job.handle, job.function, job.unique, job.reducer, job.data
                )
            )
        else:
            self.send(frame_res(_JOB_ASSIGN_UNIQ, job.handle, job.function, job.unique, job.data))
        expiry = job.expiry
        if expiry is not None and self.held is not None:  # its timeout runs once it leaves
            expiry.discard(job)
            # partial, not a lambda: one made cells of self, job and expiry for every assign.
            self.when_sent(partial(self._timeout_from_now, job, expiry))

    def _timeout_from_now(self, job: Job, expiry: Expiry) -> None:
        """The assignment has left (ClientSide.when_sent): the job's CAN_DO_TIMEOUT runs."""
        if job.expiry is expiry and self.running.get(job.handle) is job:
            expiry.add(job, self.peer())

    def room_for(self, function: bytes) -> bool:
        """A connection registers at most --max-abilities functions; past that it is closed
        (ERROR first): one peer must not make every grab and sleep walk a huge table. TCP
        connections together hold at most --max-tcp-abilities: past it, ERROR QUEUE_ERROR
        and the function is not registered (each costs memory, and 10,000 connections of
        4,096 each were gigabytes any local user could make the server hold)."""
        options = self.hub.options
        if function in self.abilities:
            return True
        if len(self.abilities) >= options.max_abilities:
            self.refuse(
                f"more than {options.max_abilities} functions on one connection (--max-abilities)",
                "ARGUMENT_TOO_LARGE",
            )
            return False
        if self.tcp and self.jobs.tcp_abilities >= options.max_tcp_abilities:
            self.send(
                error("QUEUE_ERROR", "the server holds --max-tcp-abilities TCP workers' functions")
            )
            self.hub.stats.registrations_refused["max_tcp_abilities"] += 1
            return False
        return True

    def may_serve(self, function: bytes) -> bool:
        """Reserved ``farm.*`` functions (the Executor's calls) go only to trusted workers:
        Unix-socket peers of an allowed uid. Anyone else is told, and not registered."""
        if not function.startswith(RESERVED) or self.peer_uid in self.hub.options.worker_uids:
            return True
        where = "over TCP" if self.peer_uid is None else f"by uid {self.peer_uid}"
        self.send(
            error("PERMISSION_DENIED", f"{function.decode(errors='replace')} is not served {where}")
        )
        return False

    def can_do(self, args: tuple[bytes, ...]) -> None:
        function = args[0]
        if self.function_ok(function) and self.room_for(function) and self.may_serve(function):
            self.awaits_jobs = self.awaits_jobs and function in self.abilities
            self.jobs.can_do(self.peer(), function)

    def can_do_timeout(self, args: tuple[bytes, ...]) -> None:
        function, raw = args
        number = timeout_number(raw)
        if number is None:
            self.send(error("INVALID_COMMAND", "CAN_DO_TIMEOUT timeout is not a number"))
            return
        sign, digits = (-1 if number.startswith(b"-") else 1), number.lstrip(b"+-0")
        # int() raises past 4,300 digits, leading zeros counted: they are dropped, and more
        # than 20 digits left is far past the limit (MAX_TIMEOUT in ms has 10).
        value = sign * (int(digits or b"0") if len(digits) <= 20 else p.MAX_TIMEOUT * 1000 + 1)
        if not (self.function_ok(function) and self.room_for(function)):
            return
        if not self.may_serve(function):
            return
        if value > p.MAX_TIMEOUT * 1000:  # checked before any float: 10**400 has none
            # ERROR, as for no number, and no change: a close took the worker's running job
            # from it for one bad registration. An earlier registration of the function
            # stays as it was, timeout too: dropped (CANT_DO's way), it took back the job
            # of it in hand (docs/server.md).
            self.send(error("INVALID_COMMAND", f"CAN_DO_TIMEOUT is more than {p.MAX_TIMEOUT} s"))
            return
        # The protocol says seconds; gearmand 1.1.20 reads every value as ms (probed:
        # docs/server.md), libgearman passing the caller's number on. farm reads values from
        # 1000 as ms, and below as seconds, as php.net documents them. 0 or less: none.
        seconds = 0.0 if value <= 0 else value / 1000 if value >= 1000 else float(value)
        self.awaits_jobs = self.awaits_jobs and function in self.abilities
        self.jobs.can_do(self.peer(), function, seconds)

    # -- the worker's news of its job -----------------------------------------------

    def work_update(self, args: tuple[bytes, ...], ptype: int) -> None:
        handle = args[0]
        job = self.running.get(handle)  # JobServer.held, without its call (every job)
        if job is not None and job is self.pushed:
            self.accepted()  # its news says it took the job, as JOB_ACCEPT would
        if job is None:
            if ptype == _WORK_FAIL and handle == self.excepted:
                # Perl's Gearman::Worker follows a WORK_EXCEPTION with a WORK_FAIL for the
                # same job, and died on the ERROR JOB_NOT_FOUND that answered it (gearmand's
                # answer too): dropped, a failing job no longer costs a worker. Asked first:
                # after a late exception the pair's WORK_FAIL is its tail, not the answer
                # of another late run of the job (one more in ``expired``).
                self.excepted = None
                return
            if handle in self.expired:
                # farm: the job timed out in this worker's hands and has failed already. Its
                # late answer is dropped, not answered with an ERROR that some workers (Perl's
                # Gearman::Worker) die on.
                if ptype in OUTCOME:  # one late run's answers end
                    if self.expired[handle] > 1:
                        self.expired[handle] -= 1
                    else:
                        del self.expired[handle]
                    # Its run ended here all the same: counted in jobs_done (admin `peers`,
                    # `served`: `farm ps`, and whether a command worker's exit 0 after it is
                    # a recycle). Uncounted, PHP's `$w->work(); exit(0);` after a timed-out
                    # job read as "stopped unasked" and was backed off. Counted when its
                    # answer comes, not when it expires: a worker that dies in the job
                    # instead never ended it.
                    self.jobs_done += 1
                    if ptype == _WORK_EXCEPTION:  # Perl's WORK_FAIL follows, as on time
                        self.excepted = handle
                log.debug("fd %d: late %s for timed-out job %r dropped", self.fd, ptype, handle)
                return
            self.send(error("JOB_NOT_FOUND", NOT_FOUND_TEXT.get(ptype, NOT_FOUND_DEFAULT)))
            return
        progress = PROGRESS_KIND.get(ptype)
        if progress is not None:
            self.jobs.progress(job, progress, args[1:])
            self.wait_for_readers(job)
        else:
            data = args[1] if ptype != _WORK_FAIL else b""
            if ptype == _WORK_EXCEPTION:  # a stale one names a job that has ended: harmless
                self.excepted = handle
            self.jobs.finish(self, job, OUTCOME[ptype], data)  # type: ignore[arg-type]  # as above
            self.jobs_done += 1

    def news_too_large(self, handle: bytes, exc: p.ProtocolError) -> None:
        """A packet about a job held here is over --max-packet (a result too large, say):
        the job fails, as it would come out the same each time it ran again."""
        job = self.jobs.held(self, handle)  # type: ignore[arg-type]  # a Connection: a Peer
        if job is None:
            return
        log.warning(
            "fd %d: job %r of %r failed: the worker's %s was refused (%s)",
            self.fd,
            handle,
            job.function,
            p.PACKETS[exc.ptype].name if exc.ptype is not None else "packet",
            exc,
        )
        text = f"the worker's answer was too large for the job server: {exc}"
        self.jobs.finish(self, job, Outcome.EXCEPTION, text.encode())  # type: ignore[arg-type]
