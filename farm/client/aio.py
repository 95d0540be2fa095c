"""farm.AsyncClient: the client's API in asyncio, many concurrent jobs on one connection.

Each server connection is an ``asyncio.Protocol`` that feeds received bytes to
a ``farm.protocol.client.ClientSession`` (the same bookkeeping as the blocking
``farm.Client``) and turns its events into futures and stream queues::

    call()/submit()/stream() ── conn.submit(task, packet) ──► written at the turn's end
    data_received ── session.receive(bytes) ──► JobCreated / JobProgress / JobData /
                                                JobWarning / JobEnded → the task's waiter

Requests of every coroutine share the connection; what they send in one loop
turn leaves together at its end, in writes of up to ``WRITE_CHUNK`` whole requests
while the transport takes them (farm.client.aioconn: flow control).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import ssl
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import aclosing
from typing import Any

from farm.client.aioconn import ServerConnection, StreamEvent, Waiter
from farm.client.aiolinks import AsyncLinks
from farm.client.aiomap import run_calls
from farm.client.serverpick import ServerPicker, job_key
from farm.discovery import client_servers
from farm.errors import Timeout
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
    JobEnded,
    JobProgress,
    JobStatus,
    JobWarning,
    Question,
    StatusResult,
    Task,
    timeout_error,
)
from farm.protocol.tasks import UNKNOWN, lost_since

log = logging.getLogger("farm.client.aio")

__all__ = ["AsyncClient", "Task", "JobStatus", "JobProgress", "JobData", "JobWarning", "JobEnded"]


class AsyncClient(AsyncLinks):
    """An asyncio Gearman client over one or more job servers (farm's or gearmand).

    ``servers`` and ``connect_timeout`` as for ``farm.Client`` (None: each connect
    waits as long as the kernel's takes, bounded only by a call's own timeout). Any number
    of coroutines may call, submit and stream at once; their jobs share each server's one
    connection. Errors are those of ``farm.Client``: JobException, JobFailed, Timeout,
    ServerError, ServerUnavailable.
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        connect_timeout: float | None = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = parse_servers(client_servers() if servers is None else servers)
        # A bad one fails here, not at a call; None, as farm.Client takes it: no bound.
        self.connect_timeout = check_seconds(connect_timeout, "connect_timeout")
        self.tls = tls  # TCP servers only, as farm.Client (farm.net.tls_context)
        self._conns: dict[str, ServerConnection] = {}
        self._connecting: dict[str, asyncio.Future[ServerConnection]] = {}
        self._picker = ServerPicker(self.servers)
        self._closed = False
        self._loop_end: AsyncGenerator[None, None] | None = None  # (farm.client.aiolinks)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the API --

    async def call(
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
        """Run a foreground job and return its result (in ``timeout`` seconds in all,
        connecting included)."""
        check_seconds(timeout)
        check_callbacks(on_status, on_data, on_warning, on_loop=True)  # before any send
        deadline = _deadline(timeout)
        task, waiter = await self._start(function, data, priority, unique, deadline=deadline)
        waiter.on_status, waiter.on_data, waiter.on_warning = on_status, on_data, on_warning
        try:
            return await self._outcome(task, _left(deadline), timeout)
        except Timeout:
            if task.handle is None:  # not even JOB_CREATED: a silent server, tried last a while
                self._picker.mark_down(task.server or "")
            self.abandon(task)  # the caller gave up: its result and news are dropped
            raise
        except asyncio.CancelledError:  # asyncio.timeout(), wait_for(), a map given up
            self._cancelled(task, waiter)
            raise

    async def submit(
        self,
        function: str,
        data: Data = b"",
        *,
        background: bool = False,
        priority: str = "normal",
        unique: str | None = None,
        when: _dt.datetime | float | None = None,
    ) -> Task[Waiter]:
        """Submit a job; return once the server created it (``task.handle``).

        ``when`` schedules a background job (SUBMIT_JOB_EPOCH). A foreground
        task's result comes from ``await client.wait(task)``.
        """
        epoch, background = check_schedule(when, priority, background)
        task, waiter = await self._start(
            function, data, priority, unique, background=background, when=epoch
        )
        try:
            await waiter.created
        except asyncio.CancelledError:
            # Still held (the server stopped reading): it is never sent. Once it left, the
            # server may create it, and a cancel does not undo that; but the caller of a
            # foreground one never gets the Task, so it is given up as a cancelled call's
            # is. Kept, it held its payload until the job ended (for ever for a function no
            # worker serves). A background one is kept by nothing once created.
            if not background:
                self._cancelled(task, waiter)
                raise
            conn = self._conns.get(task.server or "")
            if conn is not None and not conn.withdraw(task):
                self._not_created(task, waiter)
            raise
        if task.handle is None and task.error is not None:
            raise task.error  # the server answered ERROR (e.g. QUEUE_ERROR)
        return task

    async def wait(self, task: Task[Waiter], timeout: float | None = None) -> bytes:
        """The result of a foreground task from ``submit`` (or raise its error). A Timeout
        leaves the task as it was, as ``Future.result(timeout)`` does: wait for it again."""
        check_task(task, "wait")
        if task.background:
            raise ValueError("a background job sends no result to wait for")
        check_seconds(timeout, look=True)
        if task.abandoned and not task.done:  # nothing will end it: it waited for ever
            raise ValueError(f"{task!r} was given up (abandon, or its call's timeout)")
        return await self._outcome(task, timeout, timeout)

    async def _outcome(
        self, task: Task[Waiter], left: float | None, timeout: float | None
    ) -> bytes:
        """``wait``: ``left`` seconds at most, the rest of ``timeout`` (what a Timeout says).
        Another client's task (a farm.Client's too) is refused until it is done, as
        farm.Client refuses: its end comes on that client's connections, and its future
        belongs to that client's loop."""
        waiter = task.owner
        if not isinstance(waiter, Waiter) or waiter.client() is not self:
            if not task.done:
                raise ValueError("the task was not submitted by this client")
        else:  # (its end may wait to be handed on after news whose callback was interrupted)
            # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for returns what came
            # in the turn its caller was cancelled and drops the cancel (3.12 builds it on
            # asyncio.timeout). A call whose connect or result came as an asyncio.timeout()
            # ran out went on for the whole job, a task.cancel() (a web client gone) did
            # nothing, and a stream went on yielding.
            try:
                async with asyncio.timeout(left):
                    await asyncio.shield(waiter.ended)
            except TimeoutError:
                if not waiter.ended.done():
                    await self._look_late(task)
                if not waiter.ended.done():
                    raise timeout_error(task, timeout) from None
        if task.error is not None:
            raise task.error
        assert task.result is not None, "a task done without an error has its result"
        return task.result

    async def _look_late(self, task: Task[Waiter]) -> None:
        """One look past a deadline, as farm.Client takes: what came while the loop did not
        run (the process stopped, its VM paused: CPython's select, woken past its timeout,
        comes back empty and the timer fires first) is read before a Timeout is raised. A
        result that came in time was dropped as one."""
        conn = self._conns.get(task.server or "")
        if conn is not None:
            await conn.closed_unseen()  # lets the loop read what waits unread

    async def stream(
        self,
        function: str,
        data: Data = b"",
        *,
        priority: str = "normal",
        unique: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Run a foreground job, yielding its JobProgress, JobData and JobWarning events
        as they arrive, then JobEnded (``event.task.result``); a failed job raises instead.
        """
        check_seconds(timeout)
        deadline = _deadline(timeout)
        task, waiter = await self._start(
            function, data, priority, unique, stream=True, deadline=deadline
        )
        queue = waiter.events
        assert queue is not None
        # Past the deadline: how many of the events queued at the one look past it are
        # still to yield; no more than those (news that keeps coming to a slower consumer
        # ran the stream to the job's end, a Timeout of 1 s after 12).
        late: int | None = None
        try:
            while True:
                if late is None:
                    try:
                        if _left(deadline) == 0:  # past it: a get that need not wait would
                            raise TimeoutError  # end before asyncio.timeout_at's turn came
                        async with asyncio.timeout_at(deadline):  # (not wait_for: _outcome)
                            event = await queue.get()
                    except TimeoutError:
                        await self._look_late(task)
                        late = queue.qsize()
                        continue
                    except asyncio.CancelledError:  # as call()'s
                        self._cancelled(task, waiter)
                        raise
                elif late:
                    late -= 1
                    event = queue.get_nowait()
                else:
                    if task.handle is None:  # not even JOB_CREATED: tried last, as by call()
                        self._picker.mark_down(task.server or "")
                    raise timeout_error(task, timeout)
                if type(event) is JobEnded:
                    if task.error is not None:
                        raise task.error
                    yield event
                    return
                yield event
        finally:
            if not task.done:
                self.abandon(task)

    async def status(self, job: Task[Any] | str) -> JobStatus:
        """What the server knows of a job (a Task, or a handle: each server is asked)."""
        if isinstance(job, Task):
            if job.handle is None or job.server is None:
                raise ValueError("the task has no handle yet")
            if lost_since(job):  # as farm.Client.status says
                return UNKNOWN
            question = Question.status(job.handle)  # built first: its error is the call's
            conn = await self._connect(job.server)  # sees a close the loop had not read
            status = (await conn.ask(question)).status
            return UNKNOWN if lost_since(job) else status
        if not isinstance(job, str):  # as farm.Client says it
            raise TypeError(f"status() takes a Task or a handle string, not {type(job).__name__}")
        order = self._picker.order("")
        return (await self._first(order, Question.status(job), _known)).status

    async def status_unique(self, unique: str) -> JobStatus:
        """Status of the job with this unique key (GET_STATUS_UNIQUE): its key's server
        first, then the others (it went elsewhere when that one was down)."""
        key = check_status_key(unique)
        order = self._picker.order(key)
        return (await self._first(order, Question.status_unique(key), _known)).status

    async def map(
        self,
        function: str,
        payloads: Iterable[Data],
        *,
        max_in_flight: int = 64,
        ordered: bool = True,
        priority: str = "normal",
    ) -> AsyncGenerator[bytes, None]:
        """Run one job per payload, at most ``max_in_flight`` at once, as ``farm.Client.map``
        does: results in payload order (``ordered``) or as they finish. A failed job raises
        its error where its result would come; the jobs still in flight are then given up,
        as they are when the caller stops iterating."""
        check_map(function, priority, max_in_flight)
        calls = (  # named by its place, raised where its result would come (as_bytes)
            self.call(function, as_bytes(data, f"map payload {i}"), priority=priority)
            for i, data in enumerate(payloads)
        )
        # Closed with this one (the caller stops, or breaks off): its calls are given up now.
        async with aclosing(run_calls(calls, max_in_flight, ordered)) as results:
            async for result in results:
                yield result

    async def echo(self, data: Data = b"ping") -> bytes:
        """Round-trip ``data`` through a server (ECHO_REQ)."""
        payload = as_bytes(data)
        return await self._first(self._picker.order(""), Question.echo(payload), _any)

    async def close(self) -> None:
        """Close every connection; foreground jobs still queued are dropped by the server,
        and their calls fail here (none is sent again). Using the client again raises
        RuntimeError. Called on the loop the client serves, as every method is: from another
        live loop it raises RuntimeError and closes nothing (its transports and the calls
        waiting on them are that loop's; ``asyncio.run_coroutine_threadsafe(client.close(),
        loop)`` closes it from another thread)."""
        self._refuse_another_loop()
        self._closed = True
        self._cancel_connects()
        self._close_transports(lambda conn: not conn.loop.is_closed())
        self._conns.clear()  # (a closed loop's own were closed as it ended)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # Collected with connections open (its user never closed it): said as asyncio says
        # an unclosed transport. Its connections close on their loop (farm.client.aiolinks).
        if getattr(self, "_closed", True):  # (no attribute: __init__ refused its arguments)
            return
        if any(c.transport is not None for c in self._conns.values()):
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- jobs --

    async def _start(
        self,
        function: str,
        data: Data,
        priority: str,
        unique: str | None,
        *,
        background: bool = False,
        when: int | None = None,
        stream: bool = False,
        deadline: float | None = None,
    ) -> tuple[Task[Waiter], Waiter]:
        task: Task[Waiter] = Task(
            check_name(function),
            as_bytes(data),
            unique=check_unique(unique),
            priority=check_priority(priority),
            background=background,
            when=when,
        )
        packet = task.packet()  # first: a job past 4 GiB - 1 fails alone (conn.submit)
        conn = await self._any_connection(job_key(task.unique, task.data), deadline)
        waiter = Waiter(self, asyncio.get_running_loop(), stream)
        task.owner = waiter
        conn.submit(task, packet)
        return task, waiter

    def abandon(self, task: Task[Waiter]) -> None:
        """Stop waiting for ``task``: what the server sends of it is dropped, and the client
        keeps nothing of it once the job ends (the job itself runs on). A submit still held
        (its server stopped reading) is taken back instead: the server never sees it."""
        check_task(task, "abandon")
        self._give_up(task)


def _known(answer: StatusResult) -> bool:
    return answer.status.known


def _any(answer: bytes) -> bool:  # an echo: the first answer is the one
    return True


def _deadline(timeout: float | None) -> float | None:
    """When ``timeout`` seconds from now end, in the running loop's time; None: never."""
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _left(deadline: float | None) -> float | None:
    """The seconds left until ``deadline`` (0 once past it); None: no limit."""
    return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
