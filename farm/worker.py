"""The blocking worker: register functions, then grab, run and answer jobs.

The grab/sleep/wake cycle of each server connection is ``farm.protocol.worker.WorkerSession``;
this module drives it with one selector over every server socket plus a wake-up socketpair,
so ``stop()`` works from a signal handler or another thread. In the main thread the
socketpair is also the signal wake-up fd: a signal that lands just before the select sleeps
would otherwise run its handler only after the select's next event, which may never come.
Jobs run one at a time in the calling thread; at most one grab is in flight across servers,
so the worker never holds a job it cannot start.
"""

from __future__ import annotations

import logging
import selectors
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from farm import forkedchild
from farm.discovery import client_servers
from farm.logrepeats import Brief, Repeats
from farm.net import parse_servers, recv
from farm.protocol import MAX_CLIENT_ID, UNPRINTABLE, ProtocolError
from farm.protocol import PacketType as T
from farm.protocol.checks import check_seconds
from farm.protocol.events import ServerErrorNotice
from farm.protocol.tasks import closed_unanswered
from farm.protocol.worker import JobAssigned, JobNotHeld, WorkerSession, WorkerState
from farm.waker import Waker
from farm.workeranswer import describe, job_outcome, note_signal_handlers, raised_at, result_data
from farm.workerfunctions import WorkerFunction, WorkerFunctions
from farm.workerjob import Job
from farm.workerlinks import BACKOFF_FIRST, ServerLink, run_unsent
from farm.workernews import WorkerNews
from farm.workertimers import WorkerTimers
from farm.workerwire import fail_and_part

__all__ = ["Worker", "Job"]

log = logging.getLogger("farm.worker")

# Module names for the per-job path: an enum member read off its class costs about 100 ns
# on Python 3.11 (farm/protocol/worker.py).
_READY, _GRABBING, _WORKING = WorkerState.READY, WorkerState.GRABBING, WorkerState.WORKING
_ASSIGNS = frozenset((T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL))


class Worker(WorkerFunctions, WorkerNews, WorkerTimers):
    """A worker process's connection to its job servers.

    Functions receive a ``Job`` and return bytes, str or None (empty result). An exception
    becomes WORK_EXCEPTION "Type: message" on farm's server, WORK_FAIL on others (see
    WorkerSession.exception), and the worker goes on; so does ``sys.exit()`` in a job, and
    a result that is not data (farm.workeranswer). A KeyboardInterrupt, and what a signal
    handler of the program's own raises, end ``work()``.

    Hooks for a supervisor: ``jobs_done`` counts finished jobs; ``after_job`` (if set) is
    called with each Job after its answer is sent and may call ``stop()`` (a hook known to
    be quick may set ``answer_before_hook`` False: the answer then leaves after it, with
    the next grab, in one write); an exception it raises comes out of ``work()``, the
    answer sent all the same; ``stop()`` finishes the job in hand, sends RESET_ABILITIES
    so the servers hand this worker nothing more, and makes ``work()`` return;
    ``unregister_all()`` only stops taking jobs (``unregister(name)``, those of one function);
    ``close()`` (or ``with``) stops it for good. ``outage_grace`` (seconds, 0: none): a
    server lost or unreachable is said at INFO for that long, and a warning only if it is
    not back by then -- a supervisor that restarts its server at once says the outage
    itself, and each of its workers' two warnings only flooded the journal.

    ``connect_timeout``: the longest a server may take to take a connection, and to answer
    a grab for a worker of several servers or one stopping (one that does not is hung:
    dropped, and connected again asleep; a lone server's held grab waits by design).
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        client_id: str | None = None,
        *,
        after_job: Callable[[Job], Any] | None = None,
        connect_timeout: float = 2.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = parse_servers(client_servers() if servers is None else servers)
        self.tls = tls  # see farm.net.tls_context
        if client_id is not None and (
            not isinstance(client_id, str)
            or len(client_id.encode()) > MAX_CLIENT_ID
            or UNPRINTABLE.search(client_id.encode())
        ):  # what the server would refuse (with a line in its log, the worker unnamed)
            raise ValueError(
                f"client_id must be a str of at most {MAX_CLIENT_ID} bytes (UTF-8) without"
                f" control characters, not {client_id!r}"
            )
        self.client_id = client_id
        self.after_job = after_job
        self.answer_before_hook = True
        self.outage_grace = 0.0
        # A bad one fails here, as the clients' does, not later in work()'s thread.
        if check_seconds(connect_timeout, "connect_timeout") is None:
            raise TypeError("connect_timeout must be a number of seconds, not None")
        self.connect_timeout = connect_timeout
        self.jobs_done = 0
        self._functions: dict[str, WorkerFunction] = {}
        self._timeouts: dict[str, float | None] = {}
        self._servers: list[ServerLink] = []
        self._selector: selectors.BaseSelector | None = None
        self._grabbing: ServerLink | None = None
        self._grab_deadline: float | None = None  # see WorkerTimers._mind_the_grab
        self._next = 0  # rotation, so no server's queue starves another's
        self._stopping = False
        self._drain_asked = False  # unregister_all() was called; the loop acts on it
        self._drained = False
        # Only while work() runs (it closes them as it returns): a worker never worked, or
        # dropped unclosed after work(), holds no sockets.
        self._waker: Waker | None = None
        self._closed = False
        # Taken by every write to the servers, so abandon() may fail a job from another
        # thread, and by every read, connect and loss of a connection, as register() and
        # unregister() from another thread change what those read (WorkerSession); one
        # thread runs jobs, so it is uncontended: about 0.3 µs a job in all.
        self._send_lock = threading.Lock()
        self._unsent_due: list[Callable[[], None]] = []
        self._brief = Brief(log)
        # A function raising at one place for every bad input: a traceback a while, not each.
        self._raised = Repeats(log)

    # -- control, safe from signal handlers and other threads --

    def stop(self) -> None:
        """Finish the job in hand, unregister, and make ``work()`` return."""
        self._stopping = True
        self._wake()

    def close(self) -> None:
        """End the worker: ``stop()``, and a later ``work()`` raises RuntimeError. Its
        sockets are open only while ``work()`` runs; that returns having closed them."""
        self._closed = True
        self.stop()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        waker = self._waker  # None outside work(): its loop wakes to nothing
        if waker is not None:
            waker.wake()  # (one work() just closed: ignored, and its loop has ended)

    # -- the loop --

    def work(self, stop_after: int | None = None) -> None:
        """Serve jobs until ``stop()`` (or ``stop_after`` more jobs); then return."""
        if self._closed:
            raise RuntimeError("this farm.Worker is closed")
        if not self._functions:
            raise ValueError("no functions registered: call register() first")
        if stop_after is not None and (
            isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 0
        ):
            raise ValueError(
                f"stop_after must be a number of jobs >= 0, or None, not {stop_after!r}"
            )
        if stop_after == 0:  # nothing to serve (the goal was checked only after a job ran)
            self._stopping = False  # as when work() returns
            return
        # Not _stopping: a stop() that came before work() (a SIGTERM while the process was
        # still setting up) makes it return at once; it is cleared when work() returns.
        self._drained = False
        # The program's own signal handlers, installed by now: what one of them raises ends
        # work() (job_outcome), even a handler that put SIG_DFL back first.
        note_signal_handlers()
        goal = None if stop_after is None else self.jobs_done + stop_after
        waker = self._waker = Waker()  # a stop() from now on wakes this loop's select
        selector = self._selector = selectors.DefaultSelector()
        selector.register(waker.reader, selectors.EVENT_READ, None)
        # Held grab only with one server: two servers must not push to one worker at once.
        held = len(self.servers) == 1
        with self._send_lock:  # a register() from another thread: before or after, not between
            self._servers = [
                ServerLink(a, WorkerSession(dict(self._timeouts), self.client_id, held_grab=held))
                for a in self.servers
            ]
        signals_wake = False
        try:
            signals_wake = waker.claim_signals()
            while True:
                now = time.monotonic()
                self._reconnect_due(now)
                if self._drain_asked or (
                    self._stopping and self._grabbing is not None and not self._drained
                ):
                    with self._send_lock:  # a register() from another thread comes after
                        if self._drain_asked or self._stopping:
                            self._reset_abilities()  # ends a held grab too (NO_JOB)
                if self._stopping and self._grabbing is None:
                    break
                self._recheck_sleeps(now)  # a long sleep: grab again (SLEEP_RECHECK)
                if self._grabbing is None and not self._drained and not self._stopping:
                    self._grab()
                self._mind_the_grab(now)  # before the select: it bounds its wait
                for server in self._servers:
                    self._flush(server)
                for key, _ in selector.select(self._sleep_for(now)):
                    if key.data is None:
                        waker.drain()
                    else:
                        self._read(key.data)
                        if goal is not None and self.jobs_done >= goal:
                            self._stopping = True
            if not self._drained:
                self._reset_abilities()
        finally:
            for server in self._servers:
                if server.dial is not None:
                    server.dial.cancel()
                    server.dial = None
                if server.sock is not None:
                    self._flush(server)
                    self._close(server)
            selector.close()
            self._selector = None
            self._grabbing = self._grab_deadline = None
            self._stopping = False
            if signals_wake:
                waker.release_signals()  # before the close: its fd must not be signals' then
            self._waker = None
            waker.close()

    def _reset_abilities(self) -> None:
        for server in self._servers:
            server.session.reset_abilities()
            server.session.abilities = {}
        self._drain_asked = False
        self._drained = True

    def _grab(self) -> None:
        servers = self._servers
        for i in range(len(servers)):
            server = servers[(self._next + i) % len(servers)]
            if server.session.state is _READY:
                server.session.grab()
                self._grabbing = server
                self._next = (self._next + i + 1) % len(servers)
                return

    def _read(self, server: ServerLink) -> None:
        sock = server.sock
        if sock is None:  # lost earlier in this same turn of the loop
            return
        try:
            data = recv(sock)
        except OSError as exc:  # ETIMEDOUT (its host gone: the keepalive), ECONNRESET ...
            self._lost(server, f"connection failed ({exc})")
            return
        if not data:  # before a word over TLS: most often our certificate, refused
            tls_refusal = self.tls is not None and not server.heard
            self._lost(server, closed_unanswered(True) if tls_refusal else "closed the connection")
            return
        server.heard = True
        try:
            # Under the lock, as register() and unregister() from another thread change what
            # an ECHO_RES read here settles (WorkerSession.add_ability): before or after.
            with self._send_lock:
                events = server.session.receive(data)
        except ProtocolError as exc:
            if exc.handle is not None and exc.ptype in _ASSIGNS:  # a job too large to take
                shown = exc.handle.decode("utf-8", "backslashreplace")  # as every log names jobs
                why = f"too large for this worker, not run: its {T(exc.ptype).name} {exc}"
                log.warning("job %s failed: it is %s", shown, why)
                fail_and_part(sock, exc.handle, why)
            self._lost(server, f"broke the protocol: {exc}")
            return
        # It talks sense: retry at once, its outage over. An ERROR alone is no sign (one said
        # before each close at a connection limit was reconnected to 16 times a second).
        if server.session.answered:
            server.backoff, server.silent = BACKOFF_FIRST, False
            if server.down_since is not None:
                self._back(server)
        if self._grabbing is server and server.session.state is not _GRABBING:
            self._grabbing = self._grab_deadline = None
        self._flush(server)  # a JOB_ACCEPT leaves before its job runs
        for event in events:
            if type(event) is JobAssigned:
                with self._send_lock:  # an unregister() from another thread: before or after
                    fn = self._functions.get(event.function)
                    # Assigned (pushed to a held grab, or answering a grab) before our
                    # RESET_ABILITIES or CANT_DO reached the server, which put it back in its
                    # queue on reading that: another worker runs it. Registered again since,
                    # or not: its CAN_DO waited for the server to read that (given_back: an
                    # ECHO_RES in this same read may have let it go already).
                    back = (
                        self._drained
                        or event.given_back
                        or server.session.withdrawn(event.function)
                    )
                    if back:
                        server.session.taken_back()
                if back:
                    log.debug("job %s came after it was unregistered; not run here", event.handle)
                    continue
                self._run(server, event, fn)
            elif type(event) is JobNotHeld:
                fields = {"function": event.function, "job": event.handle}  # farm.logs' fields
                log.warning(
                    "job %s %s: job server %s no longer holds it (%s: %s): it took the job back"
                    " and dropped this run's answer; gearmand requeues a job past its"
                    " function's timeout, tells its client nothing, and hands it out again",
                    event.function,
                    event.handle,
                    server.addr,
                    event.code,
                    event.text,
                    extra=fields,
                )
            elif type(event) is ServerErrorNotice:
                if event.function is not None:  # a CAN_DO's answer: its name (the session's)
                    log.warning(
                        "job server %s refused function %r (%s: %s): no jobs of it come to"
                        " this worker from there",
                        server.addr,
                        event.function,
                        event.code,
                        event.text,
                    )
                else:
                    log.warning("job server %s: %s %s", server.addr, event.code, event.text)

    def _run(self, server: ServerLink, event: JobAssigned, fn: WorkerFunction | None) -> None:
        job = Job(event, self._timeouts.get(event.function), server, self._send_news)
        forks = forkedchild.forks
        returned = False  # the function returned: what fails now is its result
        try:
            if fn is None:
                raise LookupError(f"this worker has no function {event.function!r}")
            try:
                result = fn(job)
            except BaseException as exc:  # a child the job forked, out of it, ends here
                forkedchild.leave_if_forked(forks, event.handle, exc)
                raise
            forkedchild.leave_if_forked(forks, event.handle, None)  # only the worker answers
            returned = True
            payload = b"" if result is None else result_data(result, event.function, fn)
        except BaseException as exc:  # sys.exit() in a job fails it; a Ctrl-C ends work()
            if not job_outcome(exc):
                raise
            self._said_failed(event, exc, returned)
            with self._send_lock:  # abandon() may answer it from another thread
                if self._holds(server, job):
                    server.session.exception(describe(exc))
                    server.unsent = job.unsent  # until the answer is written
                    job.unsent = None
        else:
            with self._send_lock:
                if self._holds(server, job):
                    server.session.complete(payload)
                    server.unsent = job.unsent  # until the answer is written
                    job.unsent = None
        if job.unsent is not None:  # its server went away mid-job: nobody takes the answer
            run_unsent(job.unsent)
        self.jobs_done += 1  # before the answer leaves, so whoever sees it sees the count
        if self.after_job is not None:
            if self.answer_before_hook:  # a slow hook must not hold the caller's result,
                self._flush(server)  # nor one that ends the process lose it
            self.after_job(job)
        # Else the answer leaves with the next grab, in the loop's one write per turn.

    def _said_failed(self, event: JobAssigned, exc: BaseException, returned: bool) -> None:
        """The log's line for a job that fails on the worker's side: a refusal in one line a
        while; a result that is not data in one line naming the function and its target
        (its traceback would show farm's frames alone); an exception with its traceback,
        a while for each place it comes from (Repeats); a SystemExit saying where it was
        raised, as it ended the worker before."""
        fields = {"function": event.function, "job": event.handle}  # farm.logs' fields
        if getattr(exc, "log_brief", False):  # a refusal, e.g. an unsigned call: one line
            self._brief("job %s %s refused: %s", *fields.values(), exc, extra=fields)
        elif returned:
            kind = (event.function, "returned", str(exc))
            self._raised(
                kind, logging.WARNING, "job %s %s failed: %s", *fields.values(), exc, extra=fields
            )
        else:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            said = "raised"
            if not isinstance(exc, Exception):  # sys.exit(): it used to end the worker
                said = f"raised {exc!r} at {raised_at(exc)}: the job fails, the worker goes on"
            self._raised(
                (event.function, type(exc), where.filename, where.lineno),
                logging.WARNING,
                f"job %s %s {said.replace('%', '%%')}",
                *fields.values(),
                exc_info=True,
                extra=fields,
            )
