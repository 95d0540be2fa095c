"""AsyncClient's connection to one server: an ``asyncio.Protocol`` around a
``ClientSession``, and the ``Waiter`` coroutines wait on for each task.

The protocol feeds received bytes to the session, settles each task's waiter from the
session's events, answers queries, and writes once per loop turn; farm.client.aio
decides which server a task goes to and what happens when one goes away.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from farm.errors import ServerUnavailable
from farm.protocol import ProtocolError
from farm.protocol.client import (
    ClientSession,
    JobCreated,
    JobData,
    JobEnded,
    JobProgress,
    JobWarning,
    Query,
    Reply,
    Task,
    lost_error,
    may_resubmit,
)

log = logging.getLogger("farm.client.aio")

__all__ = ["ServerConnection", "StreamEvent", "Waiter"]


StreamEvent = JobProgress | JobData | JobWarning | JobEnded


class Waiter:
    """What coroutines wait on for one task: its creation, its end, its stream."""

    __slots__ = ("created", "ended", "events", "on_status", "on_data", "on_warning")

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: bool = False) -> None:
        self.created: asyncio.Future[Task[Waiter]] = loop.create_future()
        self.ended: asyncio.Future[Task[Waiter]] = loop.create_future()
        self.events: asyncio.Queue[StreamEvent] | None = asyncio.Queue() if stream else None
        self.on_status: Callable[[int, int], Any] | None = None
        self.on_data: Callable[[bytes], Any] | None = None
        self.on_warning: Callable[[bytes], Any] | None = None


class ServerConnection(asyncio.Protocol):
    """One server connection: bytes ⇄ the session, events → waiters."""

    def __init__(self, addr: str, loop: asyncio.AbstractEventLoop) -> None:
        self.addr = addr
        self.loop = loop
        self.session = ClientSession(addr)
        self.transport: asyncio.Transport | None = None
        self.queries: deque[tuple[Query[Any], asyncio.Future[Any]]] = deque()
        self.closed_by_client = False  # AsyncClient.close() ended it
        self._flush_due = False
        # Set by the AsyncClient: move a lost unique-keyed job to another server.
        self.resubmit: Callable[[Task[Waiter], ServerConnection], None] | None = None

    # -- requests --

    def send_soon(self) -> None:
        """Write what the session queued, once, at the end of this loop turn."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def ask(self, query: Query[Reply]) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = self.loop.create_future()
        self.queries.append((query, future))
        self.send_soon()
        return future

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive(data)
        except ProtocolError:
            self.transport.close()  # type: ignore[union-attr]  # connection_lost fails the rest
            return
        for event in events:
            try:
                self._dispatch(event)
            except Exception:
                # A user callback that raises must not cost the other jobs on this connection.
                log.exception("farm.AsyncClient: callback for %r raised", event)
        self._answer_queries()

    def _dispatch(self, event: object) -> None:
        task = getattr(event, "task", None)
        if task is None:  # e.g. an ERROR the server sent unasked: nothing waits on it
            log.warning("farm.AsyncClient: %r", event)
            return
        waiter = task.owner
        if not isinstance(waiter, Waiter):
            return
        kind = type(event)
        if kind is JobCreated:
            if not waiter.created.done():
                waiter.created.set_result(task)
            return
        if kind is JobEnded:
            if not waiter.created.done():  # an ERROR came instead of JOB_CREATED
                waiter.created.set_result(task)
            if not waiter.ended.done():
                waiter.ended.set_result(task)
        elif isinstance(event, JobProgress):
            if waiter.on_status is not None:
                waiter.on_status(event.numerator, event.denominator)
        elif isinstance(event, JobData):
            if waiter.on_data is not None:
                waiter.on_data(event.data)
        elif isinstance(event, JobWarning) and waiter.on_warning is not None:
            waiter.on_warning(event.data)
        if waiter.events is not None and isinstance(event, StreamEvent):
            waiter.events.put_nowait(event)

    def _answer_queries(self) -> None:
        while self.queries and self.queries[0][0].done:  # answered in the order asked
            query, future = self.queries.popleft()
            if future.done():
                continue
            if query.error is not None:
                future.set_exception(query.error)
            else:
                future.set_result(query.result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for task in self.session.connection_lost():
            if self.closed_by_client:  # our close(): not the server's doing, and no retry
                self.end_lost(task, ServerUnavailable("the farm.AsyncClient was closed"))
            elif may_resubmit(task) and self.resubmit is not None:
                self.resubmit(task, self)  # carries on on another server
            else:
                self.end_lost(task, lost_error(self.addr, task))
        self._answer_queries()  # the session failed them with ServerUnavailable

    def end_lost(self, task: Task[Waiter], error: Exception) -> None:
        task.error = error
        task.done = True
        self._dispatch(JobEnded(task=task))
