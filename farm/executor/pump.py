"""The executor's pump thread: the one owner of its connections and jobs in flight.

``Executor.submit`` hands a ``WorkItem`` over through ``put``: a deque append;
when the pump is asleep in select, the submitting thread sends the call itself
under the pump's lock (no thread hop: the reply wakes the pump), or writes a
wake-up byte if the pump turns out busy. Everything else runs in the pump
thread, which holds the lock except while it waits. Each turn of the loop sends as many pending
items as the in-flight window allows, writes each connection's queued bytes
once, then waits for replies, the socket becoming writable, or a wake-up.
Replies go through ``farm.protocol.client.ClientSession``, as in ``farm.Client``.

Batching: when more calls wait than the window has room for, consecutive
calls of the same function travel as one job (``BATCH``, farm/executor/call.py),
so tiny calls stop paying a job each -- a packet, a queue entry and a wake-up
at the server, a grab at the worker. Each call keeps its own future, resolved
as its outcome arrives (WORK_DATA while the batch runs, WORK_COMPLETE at its
end). If the batch's worker dies, the server runs the job again on another
worker (``job_retries``); calls whose outcome already arrived stay resolved
(their second outcome is dropped, but they did run twice), the others resolve
from the rerun or, when the retries run out, fail with ``WorkerLost``.
"""

from __future__ import annotations

import logging
import pickle
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures._base import BrokenExecutor
from typing import Any, NamedTuple

from farm.client.serverpick import ServerPicker
from farm.errors import FarmError, JobError, JobFailed, ServerUnavailable, WorkerLost
from farm.executor.call import (
    BATCH,
    BROKEN,
    CALL_ID_SIZE,
    NO_SETUP,
    OK,
    SINGLE,
    RemoteTraceback,
    encode_call,
    open_result,
)
from farm.executor.signing import SignatureError, Signer
from farm.net import Waker, connect
from farm.protocol import ProtocolError
from farm.protocol.client import ClientSession, JobData, JobEnded, Task

__all__ = ["Pump", "WorkItem", "BrokenFarmExecutor", "fail_broken"]

log = logging.getLogger("farm.executor")

READ = selectors.EVENT_READ
READ_WRITE = selectors.EVENT_READ | selectors.EVENT_WRITE


#: Most calls one batch carries.
MAX_BATCH = 64
#: Seconds a sent call stays valid: a worker refuses it after that (and any replay of it).
CALL_TTL = 24 * 3600


class BrokenFarmExecutor(FarmError, BrokenExecutor):
    """The executor's pump thread failed: every call it had not finished fails with this, and
    so does every later ``submit`` (as ``BrokenProcessPool`` for ProcessPoolExecutor)."""


class InitializerFailed(Exception):
    """Raised in the pump thread when a worker reports that the executor's initializer
    failed: the pump breaks, as ProcessPoolExecutor breaks when a child's initializer fails."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(_describe(error))
        self.error = error


class Call(NamedTuple):
    """A call as the caller's thread encoded it: the pickled function, its kind and body."""

    fn: bytes
    kind: int  # SINGLE or CHUNK (the pump makes BATCHes of SINGLEs)
    body: bytes


class WorkItem:
    """A call waiting for, or on, the farm: its future and what it asks."""

    __slots__ = ("future", "call")

    def __init__(self, future: Future[Any], call: Call) -> None:
        self.future = future
        self.call = call


class Flight:
    """The calls one job carries (one, or a batch), and the id its results must name."""

    __slots__ = ("items", "call_id")

    def __init__(self, items: list[WorkItem]) -> None:
        self.items = items
        self.call_id = secrets.token_bytes(CALL_ID_SIZE)  # fresh: binds results, stops replays

    @property
    def batched(self) -> bool:
        """Several calls in one job (BATCH): outcomes come back with their index."""
        return len(self.items) > 1


class _Conn:
    __slots__ = ("addr", "sock", "session", "out", "events")

    def __init__(self, addr: str, sock: socket.socket) -> None:
        self.addr = addr
        self.sock = sock
        self.session = ClientSession(addr)
        self.out = bytearray()  # bytes the kernel did not take yet (we never block on send)
        self.events = READ


class Pump:
    """Moves work items to job servers and outcomes to futures (see the module docstring)."""

    def __init__(
        self,
        servers: list[str],
        signer: Signer,
        function: str,
        priority: str,
        max_in_flight: int,
        connect_timeout: float,
        setup: tuple[int, bytes] = NO_SETUP,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.servers = servers
        self.setup = setup  # the initializer and max_tasks_per_child sections of every call
        self.max_batch = max_batch  # 1 with max_tasks_per_child: a worker counts jobs
        self.signer = signer
        self.function = function
        self.priority = priority
        self.max_in_flight = max_in_flight
        self.call_ttl = CALL_TTL  # a call not run within this many seconds never runs
        # Refill the window in batches: k submits cost one wake-up for their k
        # JOB_CREATED replies, where one-for-one refills cost k wake-ups.
        self._refill_below = max_in_flight - max(1, max_in_flight // 4) + 1
        self.connect_timeout = connect_timeout
        self.broken: str | None = None
        self.broken_by: BaseException | None = None
        self.finished = threading.Event()
        self.started = False  # set by the executor before it starts the thread on run()
        # Shared with submitting threads: the deque (append/popleft are atomic),
        # and two flags whose order of writes and reads makes wake-ups safe.
        self._pending: deque[WorkItem] = deque()
        self._sleeping = False
        self._stopping = False
        self._waker = Waker()
        # Held by the pump thread except while it waits in select; a submitting thread
        # that finds it free sends its call itself (see put). Guards all below.
        self._lock = threading.Lock()
        # Pump-thread state only.
        self._conns: dict[str, _Conn] = {}
        self._picker = ServerPicker(servers)
        self._in_flight = 0
        # Every flight from the moment its first call leaves the deque until its job
        # ended and its futures were settled: what a failing pump must still fail.
        self._flights: set[Flight] = set()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._waker.reader, READ, None)

    # -- called from other threads --

    def put(self, item: WorkItem) -> None:
        self._pending.append(item)
        if not self._sleeping:
            return  # the pump is busy: it looks at the deque before it sleeps again
        # The pump sleeps in select: send the call from this thread, with no hop to the
        # pump and back (its reply wakes the pump, which reads it). The lock is free only
        # while the pump waits in select; if it is busy after all, a wake-up byte it is.
        if self._lock.acquire(blocking=False):
            try:
                if self._sleeping and self.broken is None:
                    self._send_pending()
                    self._flush()
                    return
            finally:
                self._lock.release()
        self._wake()  # _sleeping was set before the pump's last look: it will see a byte

    def take_pending(self) -> list[WorkItem]:
        """Remove and return the items not sent yet (shutdown's cancel_futures)."""
        taken = []
        while True:
            try:
                taken.append(self._pending.popleft())
            except IndexError:
                return taken

    def stop(self) -> None:
        """Finish what is pending and in flight, then end the thread (or, for a pump whose
        thread never started, which holds no calls: release its sockets now)."""
        self._stopping = True
        if self.started:
            self._wake()
        elif not self.finished.is_set():
            self.finished.set()
            self._selector.close()
            self._waker.close()

    def _wake(self) -> None:
        self._waker.wake()

    # -- the loop --

    def run(self) -> None:
        lock = self._lock
        lock.acquire()
        try:
            while True:
                self._send_pending()
                self._flush()
                if self._idle_and_stopping():
                    break
                self._sleeping = True
                if self._pending and self._in_flight < self._refill_below:
                    self._sleeping = False  # something arrived since we looked: no sleep
                    continue
                lock.release()
                try:
                    ready = self._selector.select()
                finally:
                    lock.acquire()
                self._sleeping = False
                for key, mask in ready:
                    if key.data is None:
                        self._waker.drain()
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._write(key.data)
                    if mask & selectors.EVENT_READ:
                        self._read(key.data)
        except InitializerFailed as exc:  # no bug: the pool breaks, as ProcessPoolExecutor's
            log.critical("farm executor: the initializer failed in a worker%s", _cause_text(exc))
            why = f"the executor's initializer failed in a worker: {exc}; the executor is broken"
            self._break(why, exc.error)
        except BaseException as exc:  # a bug (or a done-callback raising SystemExit) here
            log.exception("farm executor pump failed")  # must not leave callers waiting forever
            self._break(f"the executor's pump thread failed: {_describe(exc)}", exc)
        finally:
            try:
                for conn in list(self._conns.values()):
                    self._close(conn)
                self._selector.close()
                self._waker.close()
            finally:
                self._sleeping = False  # no submitter may send through closed sockets
                lock.release()
                self.finished.set()

    def _idle_and_stopping(self) -> bool:
        return self._stopping and not self._pending and not self._in_flight

    # -- sending --

    def _send_pending(self) -> None:
        pending = self._pending
        if self._in_flight >= self._refill_below:
            return
        flights = self._flights
        while pending and self._in_flight < self.max_in_flight:
            flight = Flight([])
            flights.add(flight)  # before a call leaves the deque: _break finds it anywhere
            items = self._take(pending, flight.items)
            if not items:
                flights.discard(flight)
                continue  # all cancelled while they waited here
            try:
                conn = self._connection()
            except ServerUnavailable as exc:
                for item in items:
                    item.future.set_exception(exc)
                flights.discard(flight)
                continue
            task: Task[Flight] = Task(self.function, self._payload(flight), priority=self.priority)
            task.owner = flight
            conn.session.submit(task)
            self._in_flight += 1

    def _take(self, pending: deque[WorkItem], items: list[WorkItem]) -> list[WorkItem]:
        """The next job's calls, into ``items``: one, or a batch of one function's calls
        when many wait. Each call is in ``items`` from the moment it leaves the deque.

        A batch's size spreads what waits over twice the window, so that every
        worker still gets several jobs and the last ones end close together.
        """
        first = pending.popleft()
        items.append(first)
        if not first.future.set_running_or_notify_cancel():
            items.pop()
            return items
        if first.call.kind != SINGLE:
            return items
        size = min(self.max_batch, len(pending) // (2 * self.max_in_flight) + 1)
        fn = first.call.fn
        while len(items) < size and pending:
            nxt = pending[0]
            if nxt.call.kind != SINGLE or nxt.call.fn != fn:
                break
            items.append(pending.popleft())
            if not nxt.future.set_running_or_notify_cancel():
                items.pop()
        return items

    def _payload(self, flight: Flight) -> bytes:
        call = flight.items[0].call
        expires = int(time.time() + self.call_ttl)
        if not flight.batched:
            return encode_call(
                self.signer, flight.call_id, expires, call.fn, call.kind, call.body, self.setup
            )
        body = pickle.dumps([item.call.body for item in flight.items], pickle.HIGHEST_PROTOCOL)
        return encode_call(self.signer, flight.call_id, expires, call.fn, BATCH, body, self.setup)

    def _connection(self) -> _Conn:
        """A connection for the next job: rotate over servers, skipping refusing ones."""
        tried = []
        for addr in self._picker.order():
            conn = self._conns.get(addr)
            if conn is not None:
                return conn
            try:
                sock = connect(addr, self.connect_timeout)
            except OSError as exc:
                tried.append(f"{addr} ({exc.strerror or exc})")
                self._picker.mark_down(addr)
                continue
            sock.setblocking(False)
            conn = self._conns[addr] = _Conn(addr, sock)
            conn.session.option("exceptions")  # WORK_EXCEPTION, not WORK_FAIL, for refusals
            self._selector.register(sock, READ, conn)
            return conn
        raise ServerUnavailable("no job server is reachable; tried " + ", ".join(tried))

    def _flush(self) -> None:
        for conn in list(self._conns.values()):
            conn.out += conn.session.data_to_send()
            if conn.out:
                self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(conn, "write failed")
            return
        del conn.out[:sent]
        events = READ_WRITE if conn.out else READ
        if events != conn.events:
            conn.events = events
            self._selector.modify(conn.sock, events, conn)

    # -- receiving --

    def _read(self, conn: _Conn) -> None:
        if self._conns.get(conn.addr) is not conn:
            return  # dropped by a write error in this same turn
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn, "closed the connection")
            return
        try:
            events = conn.session.receive(data)
        except ProtocolError as exc:
            self._drop(conn, f"broke the protocol: {exc}")
            return
        for event in events:
            if isinstance(event, JobEnded):
                self._in_flight -= 1
                self._complete(event.task)
                self._flights.discard(_flight(event.task))  # not before: _break still finds it
            elif isinstance(event, JobData):
                self._partial(event.task, event.data)

    def _partial(self, task: Task[Flight], data: bytes) -> None:
        """WORK_DATA of a batch: the outcomes of the calls it finished so far."""
        flight = _flight(task)
        if flight.batched:
            self._resolve_batch(task, flight, data)

    def _complete(self, task: Task[Flight]) -> None:
        flight = _flight(task)
        error = task.error
        if error is not None:
            if type(error) is JobFailed:  # no exception came first: the worker is gone
                error = WorkerLost(
                    f"the worker running job {task.handle} died (or overran its timeout);"
                    " the call's outcome is unknown"
                )
            for item in flight.items:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        if flight.batched:
            self._resolve_batch(task, flight, task.result or b"")
            for item in flight.items:  # a well-formed batch leaves none; a broken one says so
                if not item.future.done():
                    item.future.set_exception(JobError(f"job {task.handle} lost this call"))
            return
        try:
            outcome = self._open(task, task.result or b"")
        except Exception as exc:
            flight.items[0].future.set_exception(exc)
            return
        _settle(flight.items[0].future, outcome)

    def _resolve_batch(self, task: Task[Flight], flight: Flight, data: bytes) -> None:
        try:
            first, outcomes = self._open(task, data)
        except Exception as exc:
            for item in flight.items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, outcome in zip(flight.items[first:], outcomes, strict=False):
            if not item.future.done():  # a rerun after a worker died repeats early outcomes
                _settle(item.future, outcome)

    def _open(self, task: Task[Flight], data: bytes) -> Any:
        """Verify and unpickle a result; SignatureError, or JobError when it will not load.

        Whatever unpickling raises -- even SystemExit from a ``__reduce__`` -- is the
        failure of this job's calls only: the pump lives on. (ProcessPoolExecutor breaks
        instead, because it cannot tell whose result its pipe held; here the job says.)
        """
        try:
            return pickle.loads(open_result(self.signer, _flight(task).call_id, data))
        except SignatureError:
            raise
        except BaseException as exc:
            why = f"cannot unpickle the result of job {task.handle}: {_describe(exc)}"
            raise JobError(why) from exc

    # -- losing connections --

    def _close(self, conn: _Conn) -> None:
        if self._conns.get(conn.addr) is conn:
            del self._conns[conn.addr]
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def _drop(self, conn: _Conn, why: str) -> None:
        """The server went away: every call it held fails (it may or may not have run)."""
        log.warning("job server %s %s", conn.addr, why)
        self._close(conn)
        self._picker.mark_down(conn.addr)
        for task in conn.session.connection_lost():
            self._in_flight -= 1
            lost = ServerUnavailable(
                f"job server {conn.addr} {why} while holding job {task.handle}"
            )
            flight = _flight(task)
            for item in flight.items:
                if not item.future.done():
                    item.future.set_exception(lost)
            self._flights.discard(flight)

    def why_broken(self) -> str | None:
        """Why the pump stopped for good (None while it works); read anew on each call."""
        return self.broken

    def _break(self, why: str, cause: BaseException) -> None:
        """The pump failed: fail every call not settled, waiting or in flight, and refuse
        new ones (``broken`` is set before the deque is emptied: see Executor._enqueue)."""
        self.broken_by = cause
        self.broken = why
        items = self.take_pending()
        for flight in self._flights:
            items += flight.items
        self._flights.clear()
        fail_broken(items, why, cause)


def fail_broken(items: list[WorkItem], why: str, cause: BaseException | None) -> None:
    """Fail each call not settled yet with BrokenFarmExecutor (a cancelled one stays so).

    A done-callback that raises (even SystemExit) cannot stop the others from failing.
    """
    for item in items:
        future = item.future
        try:
            if future.done():
                continue
            if not future.running() and not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            error = BrokenFarmExecutor(why)
            error.__cause__ = cause
            future.set_exception(error)
        except BaseException:
            log.exception("farm executor: failing a call of the broken pump")


def _describe(exc: BaseException) -> str:
    """``Type: message``, even for an exception whose ``str()`` raises."""
    try:
        text = str(exc)
    except BaseException:
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _flight(task: Task[Flight]) -> Flight:
    """The calls a task was made for (every task the pump submits has them)."""
    flight = task.owner
    assert flight is not None, f"{task!r} was not submitted by the pump"
    return flight


def _settle(future: Future[Any], outcome: tuple[Any, ...]) -> None:
    """Resolve a call's future from its outcome: (OK, value) or (ERROR, exc, traceback);
    (BROKEN, exc, traceback) raises InitializerFailed, which breaks the pump."""
    if outcome[0] == OK:
        future.set_result(outcome[1])
        return
    raised, text = outcome[1], outcome[2]
    raised.__cause__ = RemoteTraceback(text)
    if outcome[0] == BROKEN:
        raise InitializerFailed(raised)
    future.set_exception(raised)


def _cause_text(exc: InitializerFailed) -> str:
    cause = exc.error.__cause__
    return f":{cause}" if isinstance(cause, RemoteTraceback) else f": {exc}"
