"""The blocking client: call, submit, status, map (a task set) and failover over servers.

Its connections, and the moving of bytes, are ``farm.client.blockingconn``'s; what a
reply means is ``farm.protocol.client``'s.
"""

from __future__ import annotations

import datetime as _dt
import logging
import ssl
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

from farm.client.blockingconn import Connections
from farm.client.guard import close_wire, one_thread
from farm.client.serverpick import ServerPicker
from farm.client.statusask import first_echo, first_known
from farm.client.taskset import task_set
from farm.discovery import client_servers
from farm.errors import ServerUnavailable, Timeout
from farm.net import parse_servers
from farm.protocol.checks import (
    Data,
    as_bytes,
    check_callbacks,
    check_map,
    check_name,
    check_priority,
    check_schedule,
    check_seconds,
    check_status_key,
    check_task,
    check_unique,
)
from farm.protocol.client import (
    JobData,
    JobProgress,
    JobStatus,
    JobWarning,
    Question,
    Reply,
    StatusResult,
    Task,
    TaskEvent,
    TaskListener,
    timeout_error,
)
from farm.protocol.tasks import UNKNOWN, lost_since

__all__ = ["Client", "Task", "JobStatus"]


log = logging.getLogger("farm.client")


class Callbacks:
    """The listener of a ``call`` with progress callbacks: each event to its callback."""

    __slots__ = ("on_status", "on_data", "on_warning")

    def __init__(
        self,
        on_status: Callable[[int, int], Any] | None,
        on_data: Callable[[bytes], Any] | None,
        on_warning: Callable[[bytes], Any] | None,
    ) -> None:
        self.on_status = on_status
        self.on_data = on_data
        self.on_warning = on_warning

    def task_event(self, event: TaskEvent) -> None:
        if type(event) is JobProgress:
            if self.on_status:
                self.on_status(event.numerator, event.denominator)
        elif type(event) is JobData:
            if self.on_data:
                self.on_data(event.data)
        elif type(event) is JobWarning and self.on_warning:
            self.on_warning(event.data)


class Client:
    """A blocking Gearman client over one or more job servers.

    ``servers``: "host:port", "host" (port 4730) or "unix:/path", a list of
    them or a comma-separated string; None finds the farm as the CLI does
    (farm.discovery: $FARM_SERVERS, $GEARMAN_SERVERS, the config's Unix socket
    if this user may use it, else its TCP address). Not thread-safe: use one
    Client per thread (``close()`` excepted: any thread may end it).

    ``timeout``: the longest this client waits on a server for anything (PHP's
    ``GearmanClient::setTimeout``): a ``call`` or ``wait`` given no timeout of its own,
    ``submit``'s JOB_CREATED, ``status``, ``echo``, and each wait of ``map`` for one of
    its jobs to end. None, the default as in libgearman, waits as long as it takes.
    ``connect_timeout`` bounds each connect (None: as long as the kernel's connect takes),
    and so does the time a call has left.
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        connect_timeout: float | None = 5.0,
        tls: ssl.SSLContext | None = None,
        timeout: float | None = None,
    ) -> None:
        self.timeout = check_seconds(timeout)
        self.servers = parse_servers(client_servers() if servers is None else servers)
        check_seconds(connect_timeout, "connect_timeout")  # a bad one fails here, not at a call
        self.connect_timeout = connect_timeout
        self.tls = tls  # see farm.net.tls_context
        self._wire = Connections(ServerPicker(self.servers), connect_timeout, tls)

    # -- the API --

    @one_thread
    def call(
        self,
        function: str,
        data: Data = b"",
        *,
        priority: str = "normal",
        unique: str | None = None,
        timeout: float | None = None,
        on_status: Callable[[int, int], Any] | None = None,
        on_data: Callable[[bytes], Any] | None = None,
        on_warning: Callable[[bytes], Any] | None = None,
    ) -> bytes:
        """Run a foreground job and return its result.

        Raises JobException (the worker raised; its text), JobFailed
        (WORK_FAIL), Timeout, ServerError or ServerUnavailable.
        """
        check_seconds(timeout)
        check_callbacks(on_status, on_data, on_warning)  # an async def one would never run
        task = self._new_task(function, data, priority, unique)
        if on_status or on_data or on_warning:
            task.owner = Callbacks(on_status, on_data, on_warning)
        limit = self.timeout if timeout is None else timeout
        deadline = self._deadline(limit)  # connecting counts: the call's time in all
        self._wire.submit(task, deadline=deadline)
        try:
            return self._wait_until(task, deadline, limit)
        except BaseException as exc:
            # The caller gave up: a Timeout, or an exception not the job's (Ctrl-C, a signal
            # handler's alarm), as AsyncClient's cancelled call does. Kept, such a job's
            # callbacks fired inside the next calls, and the client held it until it ended.
            if not task.done:
                if task.handle is None and isinstance(exc, Timeout):
                    self._wire.picker.mark_down(task.server or "")  # silent: tried last a while
                self._give_up(task)
            raise

    @one_thread
    def submit(
        self,
        function: str,
        data: Data = b"",
        *,
        background: bool = False,
        priority: str = "normal",
        unique: str | None = None,
        when: _dt.datetime | float | None = None,
    ) -> Task[TaskListener]:
        """Submit a job and return once the server has created it (``task.handle``).

        ``when`` (a datetime or epoch seconds) holds a background job until
        then (SUBMIT_JOB_EPOCH; implies background, normal priority). A
        foreground task's result comes from ``wait(task)``.
        """
        epoch, background = check_schedule(when, priority, background)
        task = self._new_task(function, data, priority, unique, background=background, when=epoch)
        deadline = self._deadline(self.timeout)
        self._wire.submit(task, deadline=deadline)
        if not self._wire.pump(lambda: task.handle is not None or task.done, deadline):
            self._wire.picker.mark_down(task.server or "")  # silent: tried last for a while
            self.abandon(task)  # a JOB_CREATED that comes later is dropped
            raise timeout_error(task, self.timeout)
        if task.error is not None and task.handle is None:
            raise task.error  # refused, or its connection lost: no job was made
        # A job's end may come in the read that brought its JOB_CREATED (a fast worker, or a
        # network that batches): the task is returned all the same, and ``wait`` raises.
        return task

    @one_thread
    def wait(self, task: Task[TaskListener], timeout: float | None = None) -> bytes:
        """Wait for a foreground task's result (see ``call`` for the errors). A Timeout
        leaves the task as it was, as ``Future.result(timeout)`` does: wait for it again."""
        check_task(task, "wait")
        if task.background:
            raise ValueError("a background job sends no result to wait for")
        check_seconds(timeout, look=True)
        if task.abandoned and not task.done:  # nothing will end it: it waited for ever
            raise ValueError(f"{task!r} was given up (abandon, or its call's timeout)")
        if self._wire.closed and not task.done:
            raise RuntimeError("this farm.Client is closed")
        if not task.done and not any(c.session.holds(task) for c in self._wire.conns.values()):
            # Another client's task: its end comes on that client's connection, never on
            # ours, and this waited for ever (AsyncClient.wait says the same).
            raise ValueError("the task was not submitted by this client")
        if timeout is None:
            timeout = self.timeout
        return self._wait_until(task, self._deadline(timeout), timeout)

    def _wait_until(
        self, task: Task[TaskListener], deadline: float | None, timeout: float | None
    ) -> bytes:
        """``wait``: until ``deadline``, which ends ``timeout`` (what a Timeout says)."""
        if not self._wire.pump(lambda: task.done, deadline):
            raise timeout_error(task, timeout)
        if task.error is not None:
            raise task.error
        assert task.result is not None, "a task done without an error has its result"
        return task.result

    @one_thread
    def abandon(self, task: Task[TaskListener]) -> None:
        """Stop waiting for ``task``: what the server sends of it is dropped, and the client
        keeps nothing of it once the job ends (the job itself runs on; a background job has
        nothing to drop)."""
        check_task(task, "abandon")
        conn = self._wire.conns.get(task.server or "")
        if conn is not None:
            conn.session.abandon(task)

    @one_thread
    def status(self, job: Task[Any] | str) -> JobStatus:
        """What the server knows of a job: known, running, numerator, denominator. A Task
        whose connection to its server was lost since is unknown: the server there now may
        be a new process (gearmand's handles count from H:host:1 again in each), and would
        answer for another job; ``status_unique`` follows a keyed job across restarts."""
        if isinstance(job, Task):
            if job.handle is None or job.server is None:
                raise ValueError("the task has no handle yet")
            handle = job.handle
            if lost_since(job):
                return UNKNOWN
            try:
                status = self._ask(job.server, Question.status(handle)).status
            except ServerUnavailable:
                # Its connection's close seen only as it was made again, and the server did
                # not take it: as lost as a close seen before (AsyncClient answers so too),
                # where asking a live server's task first had made the difference.
                if lost_since(job):
                    return UNKNOWN
                raise
            # Its connection's close seen only as it was made again (catch_up): asked of the
            # server there now, whose answer is for another job, if any.
            return UNKNOWN if lost_since(job) else status
        if not isinstance(job, str):
            raise TypeError(f"status() takes a Task or a handle string, not {type(job).__name__}")
        # A bare handle names no server: ask each.
        return self._first_known(self._wire.picker.order(""), Question.status(job))

    @one_thread
    def status_unique(self, unique: str) -> JobStatus:
        """Status of the job with this unique key (GET_STATUS_UNIQUE): its key's server
        first, then the others (it went elsewhere when that one was down)."""
        key = check_status_key(unique)
        return self._first_known(self._wire.picker.order(key), Question.status_unique(key))

    @one_thread
    def echo(self, data: Data = b"ping") -> bytes:
        """Round-trip ``data`` through a server (ECHO_REQ): the first that answers, asked
        in turn as ``status`` asks (farm.client.statusask)."""
        return first_echo(self._wire, self._wire.picker.order(""), as_bytes(data), self.timeout)

    def map(
        self,
        function: str,
        payloads: Iterable[Data],
        *,
        max_in_flight: int = 64,
        ordered: bool = True,
        priority: str = "normal",
    ) -> Generator[bytes, None, None]:
        """Run one job per payload, pipelined over the servers (libgearman's task set).

        Yields results in payload order (``ordered``) or as they finish. A
        failed job raises its error when its result would be yielded.
        """
        check_map(function, priority, max_in_flight)
        # Begun while open, a close() between two of its steps ends it as closed, as it
        # ends a call under way; each step alone would take it for a use after close().
        opened = not self._wire.closed
        return task_set(
            function,
            iter(payloads),
            submit=lambda task: self._map_submit(opened, task),
            pump=self._map_pump,
            abandon=self.abandon,
            silent=lambda task: self._wire.picker.mark_down(task.server or ""),
            timeout=self.timeout,
            limit=max_in_flight,
            ordered=ordered,
            priority=priority,
        )

    def close(self) -> None:
        """Close every connection; foreground jobs still queued are dropped by the server.
        The client is done: using it again raises RuntimeError. From any thread: a call
        under way in another one (connecting, or waiting) fails at once, as closed."""
        close_wire(self._wire)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @one_thread
    def _map_submit(self, opened: bool, task: Task[TaskListener]) -> None:
        if opened:
            self._wire.fail_if_closed()
        self._wire.submit(task, deadline=self._deadline(self.timeout))

    @one_thread
    def _map_pump(self, until: Callable[[], bool]) -> bool:
        return self._wire.pump(until, self._deadline(self.timeout))

    def _give_up(self, task: Task[TaskListener]) -> None:
        """A call's caller stopped waiting: a submit none of which has left is taken back
        (the server never sees it), else the task is abandoned."""
        conn = self._wire.conns.get(task.server or "")
        if task.handle is None and conn is not None and conn.session.withdraw(task, conn.unsent):
            return
        self.abandon(task)

    # -- choosing servers and connecting --

    def _new_task(
        self,
        function: str,
        data: Data,
        priority: str,
        unique: str | None,
        *,
        background: bool = False,
        when: int | None = None,
    ) -> Task[TaskListener]:
        return Task(
            check_name(function),
            as_bytes(data),
            unique=check_unique(unique),
            priority=check_priority(priority),
            background=background,
            when=when,
        )

    def _first_known(self, addrs: list[str], question: Question[StatusResult]) -> JobStatus:
        """The status of the first of ``addrs`` that knows the job (farm.client.statusask)."""
        return first_known(self._wire, addrs, question, self.timeout)

    def _ask(self, addr: str, question: Question[Reply]) -> Reply:
        deadline, asked = self._deadline(self.timeout), time.monotonic()
        try:
            conn = self._wire.connection(addr, deadline)
        except OSError as exc:
            self._wire.fail_if_closed()  # by a signal handler while it connected
            # Tried last for a while, as for jobs (longer if its connect took longer).
            self._wire.picker.mark_down(addr, spent=time.monotonic() - asked)
            raise ServerUnavailable(f"{addr}: {exc.strerror or exc}") from exc
        query = self._wire.ask(conn, question)
        if not self._wire.pump(lambda: query.done, deadline):
            # Its answer, should it come, is matched and dropped; the connection stays, and
            # the server is tried last for a while.
            self._wire.picker.mark_down(addr)
            raise ServerUnavailable(f"{addr} did not answer within {self.timeout}s")
        if query.error is not None:
            raise query.error
        assert query.result is not None, "a query done without an error has its reply"
        return query.result

    # -- waiting --

    def _deadline(self, timeout: float | None) -> float | None:
        """When a wait of ``timeout`` seconds ends (at once for 0 or less); None: never."""
        return None if timeout is None else time.monotonic() + timeout
