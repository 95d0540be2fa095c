"""AsyncClient's connection to one server: an ``asyncio.Protocol`` around a
``ClientSession``, and the ``Waiter`` coroutines wait on for each task.

The protocol feeds received bytes to the session, settles each task's waiter from the
session's events, answers queries, and flushes once per loop turn; farm.client.aio
decides which server a task goes to and what happens when one goes away.

Flow control: while the transport says its buffer is past its high-water mark
(``pause_writing``, a server that does not read), requests stay queued in the session,
whole and in order, where one whose caller gives up can still be taken back; they go out
when the transport resumes. A write hands over at most ``WRITE_CHUNK`` bytes of whole
requests, so one loop turn's burst stops at the mark too.
"""

from __future__ import annotations

import asyncio
import logging
import select
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from farm.client.aiopeek import peek
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
    Question,
    Reply,
    Task,
    lost_error,
    may_resubmit,
)
from farm.protocol.tasks import closed_unanswered

log = logging.getLogger("farm.client.aio")

__all__ = ["ServerConnection", "StreamEvent", "Waiter", "WRITE_CHUNK", "closed_error"]

#: How many loop turns in a row in which the transport reads nothing a look for a close
#: the loop has not read yet (``closed_unseen``) waits for it; a server whose bytes wait
#: unread that long is alive. Turns that read go on: a late reply of many MB before the end.
CATCH_UP_TURNS = 8

#: The most seconds that look lets the transport read what came before the end: a live
#: server that streams faster than the loop reads holds each request this long at most.
CATCH_UP_SECONDS = 1.0

# The peer's end of a stream socket, reported even while what it sent before waits unread.
_RDHUP = getattr(select, "POLLRDHUP", 0)

#: A connection the loop read within this many seconds, with no end from its server, is not
#: looked at further by ``closed_unseen``: the loop is reading it (a pipelined client).
READ_RECENTLY = 0.05

#: The most one ``transport.write`` is handed (whole requests; one larger request goes
#: alone). Past the transport's high-water mark it pauses us, and what is left is held.
WRITE_CHUNK = 64 * 1024


StreamEvent = JobProgress | JobData | JobWarning | JobEnded
#: What moves a lost unique-keyed job to another server (AsyncClient._resubmit).
Resubmit = Callable[["Task[Waiter]", "ServerConnection"], None]


def closed_error() -> ServerUnavailable:
    """What a call or query ended by ``AsyncClient.close()`` raises."""
    return ServerUnavailable("the farm.AsyncClient was closed")


class Waiter:
    """What coroutines wait on for one task: its creation, its end, its stream."""

    __slots__ = (
        "client",
        "created",
        "ended",
        "events",
        "on_status",
        "on_data",
        "on_warning",
        "since",
    )

    def __init__(
        self, client: object, loop: asyncio.AbstractEventLoop, stream: bool = False
    ) -> None:
        # The AsyncClient that submitted the task: only it waits on it while it runs. Not
        # which session holds it: a keyed job being resubmitted is held by none meanwhile.
        # Weakly: a task kept after its client closed keeps no client alive.
        self.client = weakref.ref(client)
        self.created: asyncio.Future[Task[Waiter]] = loop.create_future()
        self.ended: asyncio.Future[Task[Waiter]] = loop.create_future()
        self.events: asyncio.Queue[StreamEvent] | None = asyncio.Queue() if stream else None
        self.on_status: Callable[[int, int], Any] | None = None
        self.on_data: Callable[[bytes], Any] | None = None
        self.on_warning: Callable[[bytes], Any] | None = None
        # When the task was handed to its connection (loop time): how long the server has
        # left it without JOB_CREATED when its caller gives up (AsyncClient._not_created).
        self.since = loop.time()


class ServerConnection(asyncio.Protocol):
    """One server connection: bytes ⇄ the session, events → waiters."""

    def __init__(self, addr: str, loop: asyncio.AbstractEventLoop) -> None:
        self.addr = addr
        self.loop = loop
        self.session = ClientSession(addr)
        self.transport: asyncio.Transport | None = None
        self.queries: deque[tuple[Query[Any], asyncio.Future[Any]]] = deque()
        self.closed_by_client = False  # AsyncClient.close() ended it
        self.cut = False  # an exception cut a read or a write short (``cut_short``)
        self.lost_how = "went away"  # what a job lost with it says of the server
        self.tls = False  # over TLS (connection_made)
        self.writing_paused = False  # the transport's buffer is past its high-water mark
        self.unsent_at_least = 0  # of what was written, if lost now (pause_writing, _flush)
        self.received = 0  # bytes read so far: whether ``closed_unseen``'s wait reads on
        # Says when the server has ended the connection (POLLRDHUP: its FIN, whatever waits
        # unread before it). With ``read_at``, ``closed_unseen`` gives the loop turns only on
        # a connection ended, or one the loop has not read for READ_RECENTLY (a late reply
        # may hold the FIN back in the server's buffers): a pipelined client's requests each
        # found replies waiting and waited for the loop to read them, a quarter of its calls
        # a second (20,000 calls 64 at a time, 2 cores).
        self.ended: select.poll | None = None
        self.read_at = 0.0  # the loop's time of its last read of this connection
        self.undelivered: deque[object] = deque()  # read, not yet handed on (``_deliver``)
        self.socket_kind: tuple[int, int, int] | None = None  # family, type, proto
        # Set by the AsyncClient: move a lost unique-keyed job to another server. Weakly
        # (the loop holds this protocol): a client gone has nowhere to move it.
        self.resubmit: weakref.WeakMethod[Resubmit] | None = None

    # -- requests --

    def send_soon(self) -> None:
        """Write what the session queued at the end of this loop turn (the turn's first
        flush writes it all; the others find nothing). No flag saying one is due: a signal
        handler's exception that ended a flush as it began left it set for good, and
        nothing on the connection was written again."""
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        try:
            while not self.writing_paused:  # paused: the rest stays held in the session
                transport = self.transport
                if transport is None or transport.is_closing():
                    return  # connection_lost fails what is queued
                data = self.session.data_to_send(WRITE_CHUNK)
                if not data:
                    return
                transport.write(data)  # calls pause_writing() itself when past the mark
                if transport.is_closing():  # its send failed (a reset): none of it left
                    self.unsent_at_least = len(data)
                    return
        except BaseException:  # a signal handler's (asyncio logs it, or lets it out)
            self.cut_short()  # requests taken, perhaps not written whole, are awaited
            raise

    def cut_short(self) -> None:
        """An exception cut a read or a write of this connection short: what the server
        says next would be read out of step (a JOB_CREATED lost, the next call's was taken
        for the one given up, and every later call waited for ever). The connection goes;
        its calls fail, none sent again nor its server marked down, as their jobs may run
        (``connection_lost``), and the next call connects anew."""
        self.cut = True
        self.lost_how = "was dropped by the client: an exception cut short a read or a send on it"
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.abort()  # connection_lost at the loop's next turn

    def withdraw(self, request: Task[Waiter] | Query[Any]) -> bool:
        """Take back a request still held here (the transport paused): it is never sent."""
        return self.session.withdraw_queued(request)

    def give_up(self, task: Task[Waiter]) -> bool:
        """Its caller stopped waiting for ``task``: a submit still held is taken back, else
        what the server sends of it is dropped (the job runs on). Whether it had left."""
        if self.withdraw(task):
            task.abandoned = True  # and a resubmit under way does not send it either
            return False
        self.session.abandon(task)
        return True

    async def closed_unseen(self) -> bool:
        """Whether the server has closed this connection, the loop having not read its end
        yet (a coroutine's blocking work, a loop driven a step at a time, while the server
        restarted): then it is aborted here, and what it held fails or moves on as when the
        loop sees a close (``connection_lost``), instead of the next request going onto it
        (as farm.Client's ``catch_up``). A look at the socket, not a read: what waits before
        the end (a late reply, a TLS record) is the transport's to read, so the loop is let
        run a turn at a time for it while it reads (a late reply of several MB takes many
        turns), ``CATCH_UP_TURNS`` in a row that read nothing at most and
        ``CATCH_UP_SECONDS`` in all (a server sending on is alive). Counting all turns
        instead took a closed connection with a late reply over ~1.5 MB for alive: the next
        request went onto it and was lost with it. One ``asyncio.sleep(0)`` is not enough:
        the loop resumes its caller before the read the same poll found, and a close comes
        a turn after its read."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return True  # lost: its descriptor may be another file's now, and ``ended`` stale
        now = self.loop.time()
        ended = self.ended
        if ended is not None and now - self.read_at < READ_RECENTLY and not ended.poll(0):
            return False  # the loop reads it, and no end came: what waits is the loop's to read
        idle = 0
        until = now + CATCH_UP_SECONDS
        while idle < CATCH_UP_TURNS and self.loop.time() < until:
            transport = self.transport
            if transport is None or transport.is_closing():
                return True
            unread = peek(transport, self.socket_kind)
            if unread is None:  # nothing to read: open
                return False
            if not unread:  # its end, nothing before it
                transport.abort()  # connection_lost next turn, as the loop's read would
                return True
            received = self.received
            await asyncio.sleep(0)
            idle = 0 if self.received != received else idle + 1
        return False

    def submit(self, task: Task[Waiter], packet: bytes) -> None:
        """Queue ``task``'s submit (``packet``, built by the caller: what fails there fails
        that call alone, nothing queued), written at the turn's end. An exception from
        outside (a signal handler's) that cuts the queueing short may leave the packet queued
        and its answer not awaited, to be taken for the next request's: the connection goes
        (``cut_short``), as farm.Client's does."""
        if self.transport is None:  # lost since it was picked (a TLS server's late refusal)
            task.unwritten = True
            raise lost_error(self.addr, task, self.lost_how)
        try:  # the flush's scheduling too: cut there, the packet waited for the next call's
            self.session.submit(task, packet)
            self.send_soon()
        except BaseException:
            self.cut_short()
            raise

    def ask(self, question: Question[Reply]) -> asyncio.Future[Reply]:
        """Queue ``question`` (built by the caller), guarded as ``submit``; its answer."""
        try:
            query = self.session.ask(question)
            future: asyncio.Future[Reply] = self.loop.create_future()
            self.queries.append((query, future))
            future.add_done_callback(lambda _: self._forget_if_held(query, future))
            self.send_soon()
        except BaseException:
            self.cut_short()
            raise
        return future

    def _forget_if_held(self, query: Query[Any], future: asyncio.Future[Any]) -> None:
        """A query whose caller was cancelled while it was held is not sent, and no answer
        is waited for (one that left is answered and dropped, in its turn)."""
        if future.cancelled() and self.withdraw(query):
            for at, (asked, _) in enumerate(self.queries):
                if asked is query:
                    del self.queries[at]
                    break

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.tls = transport.get_extra_info("sslcontext") is not None  # for closed_unanswered
        # Its socket's kind, for ``closed_unseen``'s look: read once, as the stand-in's
        # family and type (enums made on each read) cost more than the look itself.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.socket_kind = (int(sock.family), int(sock.type), int(sock.proto))
            if _RDHUP:  # Linux; elsewhere every request looks (the peek)
                self.ended = select.poll()
                self.ended.register(sock.fileno(), _RDHUP)

    def pause_writing(self) -> None:
        self.writing_paused = True  # the server is not taking our bytes: hold the rest
        # Until resumed, the transport holds more than its low-water mark unsent: a loss
        # meanwhile leaves at least that much of what was written unwritten (the tail).
        self.unsent_at_least = self.transport.get_write_buffer_limits()[0] + 1  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.unsent_at_least = 0
        self.send_soon()  # what was held goes out in order, next turn (not inside write-ready)

    def data_received(self, data: bytes) -> None:
        try:  # from the first line: a Ctrl-C at the counts dropped the bytes, and kept it
            self.received += len(data)
            self.read_at = self.loop.time()
            events = self.session.receive(data)
        except ProtocolError as exc:  # not a job server (a web server's port), or a broken one
            self.lost_how = f"broke the protocol: {exc}"
            self.transport.close()  # type: ignore[union-attr]  # connection_lost fails the rest
            return
        except BaseException:  # a signal handler's: asyncio lets a KeyboardInterrupt out
            self.cut_short()  # bytes read that the session may not have taken whole
            raise
        if self.undelivered:  # left by an interrupted callback: first, in order
            events = [*self.undelivered, *events]
            self.undelivered.clear()
        self._hand_on(events)

    def _hand_on(self, events: list[object]) -> None:
        """Hand the events read to their waiters, in order. A callback that raises
        KeyboardInterrupt (Ctrl-C; asyncio lets it out of the loop) leaves the rest (another
        job's end, read in the same packet run) to be handed on when the loop runs again;
        dropped, that job's caller waited for it for ever."""
        for at, event in enumerate(events):
            try:
                try:
                    self._dispatch(event)
                except Exception:
                    # A user callback that raises must not cost the other jobs on this connection.
                    log.exception("farm.AsyncClient: callback for %r raised", event)
            except BaseException:
                self.undelivered.extend(events[at + 1 :])
                self.loop.call_soon(self._deliver)
                raise
        self._answer_queries()

    def _deliver(self) -> None:
        """What an interrupted callback left (``_hand_on``), unless data came first."""
        events = list(self.undelivered)
        self.undelivered.clear()
        self._hand_on(events)

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
        self.ended = None  # its descriptor is closed, and may be reused by another file
        resubmit = None if self.resubmit is None else self.resubmit()
        unsent = self.unsent_at_least  # a submit cut short (pause_writing, _flush)
        ours = self.closed_by_client or self.cut  # not the server's doing
        if not self.received and self.lost_how == "went away":  # it never said a word
            self.lost_how = closed_unanswered(self.tls)
        lost = self.session.connection_lost(self.lost_how, unsent, not ours)
        for task in lost:
            if self.closed_by_client:  # our close(): not the server's doing, and no retry
                self.end_lost(task, closed_error())
            elif self.cut:  # its submit may have left: the job may run, so not again
                self.end_lost(task, lost_error(self.addr, task, self.lost_how))
            elif may_resubmit(task) and resubmit is not None:
                resubmit(task, self)  # carries on on another server
            else:
                self.end_lost(task, lost_error(self.addr, task, self.lost_how))
        if self.closed_by_client:  # the session failed them as lost; it was our close()
            for query, _ in self.queries:  # (all unanswered: replies come in order)
                query.error = closed_error()
        self._answer_queries()  # the session failed them with ServerUnavailable

    def end_lost(self, task: Task[Waiter], error: Exception) -> None:
        task.error = error
        task.done = True
        self._dispatch(JobEnded(task=task))
