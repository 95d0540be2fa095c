"""The executor's pump thread: the one owner of its connections and jobs in flight.

``Executor.submit`` hands a ``WorkItem`` over through ``put``: a deque append;
when the pump is asleep in select, the submitting thread sends the call itself
under the pump's lock (no thread hop: the reply wakes the pump), or writes a
wake-up byte if the pump turns out busy. Everything else runs in the pump
thread, which holds the lock except while it waits. Each turn of the loop sends as many pending
items as the in-flight window allows, writes each connection's queued bytes
once, then waits for replies, the socket becoming writable, or a wake-up.
Replies go through ``farm.protocol.client.ClientSession``, as in ``farm.Client``.
A thread waiting in ``result()`` may read its own reply instead (``wait_here``,
farm/executor/waithere.py); the done-callbacks of what it settles still run here.

What a call and a job in flight are, how waiting calls are packed into jobs
(batching) and how outcomes settle futures is farm/executor/flight.py; this
module is the thread, its lock, the connections, and the reading and writing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from farm.client.serverpick import ServerPicker
from farm.errors import ServerUnavailable
from farm.executor.flight import (
    CALL_TTL,
    MAX_BATCH,
    BrokenFarmExecutor,
    Call,
    Flight,
    InitializerFailed,
    WorkItem,
    complete,
    fail_broken,
    flight_of,
    partial,
    take,
)
from farm.executor.interrupts import whole
from farm.executor.links import Conn, Links
from farm.executor.payload import NO_SETUP, RemoteTraceback, describe
from farm.executor.poller import READ, WRITE, Poller
from farm.executor.signing import Signer
from farm.executor.waithere import Settled, WaitHere
from farm.net import READ_SIZE
from farm.protocol import ProtocolError
from farm.protocol.client import JobData, JobEnded, Task
from farm.waker import Waker

# Call, WorkItem, BrokenFarmExecutor, fail_broken and MAX_BATCH live in farm.executor.flight;
# they are named here too, where the executor and older code import them.
__all__ = ["Pump", "WorkItem", "Call", "BrokenFarmExecutor", "fail_broken", "MAX_BATCH"]

log = logging.getLogger("farm.executor")


class Pump(Links, WaitHere):
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
        workers: int | None = None,
    ) -> None:
        self.servers = servers
        self.setup = setup  # the initializer and max_tasks_per_child sections of every call
        self.max_batch = max_batch  # 1 with max_tasks_per_child: a worker counts jobs
        self.signer = signer
        self.function = function
        self.priority = priority
        self.max_in_flight = max_in_flight
        # The workers the jobs spread over, which sizes batches (see flight.take): the
        # window itself when it is a cap, fewer when jobs may also queue on the server.
        self.workers = workers or max_in_flight
        self.call_ttl = CALL_TTL  # a call not run within this many seconds never runs
        # Refill the window in batches: k submits cost one wake-up for their k
        # JOB_CREATED replies, where one-for-one refills cost k wake-ups.
        self._refill_below = max_in_flight - max(1, max_in_flight // 4) + 1
        self.connect_timeout = connect_timeout
        self.broken: str | None = None
        self.broken_by: BaseException | None = None
        self.finished = threading.Event()
        self.started = False  # set by the executor before it starts the thread on run()
        self.on_finished: Callable[[], None] | None = None  # called once all is done
        # Shared with submitting threads: the deque (append/popleft are atomic),
        # and two flags whose order of writes and reads makes wake-ups safe.
        self._pending: deque[WorkItem] = deque()
        self._sleeping = False
        self._stopping = False
        self._waker = Waker()
        # Held by the pump thread except while it waits in select; a submitting thread
        # that finds it free sends its call itself (see put). Guards all below.
        self._lock = threading.RLock()  # for _is_owned (see WaitHere._lock), never taken twice
        self._running = threading.Lock()  # held by the one thread in run() (see there)
        # Pump-thread state only.
        self._conns: dict[str, Conn] = {}
        self._dials = {}
        self._refused = {}
        self._picker = ServerPicker(servers)
        self._in_flight = 0
        # Every flight from the moment its first call leaves the deque until its job
        # ended and its futures were settled: what a failing pump must still fail.
        self._flights: set[Flight] = set()
        self._selector = Poller()
        self._selector.register(self._waker.reader.fileno(), READ, None)
        self._reader = 0  # the thread reading replies in wait_here, if any (its ident)
        self._helper = 0  # a thread doing the pump's work while it sleeps (see WaitHere)
        self._callbacks_due: deque[Settled] = deque()  # what helpers left (call_later)
        # A helper's turn at the pump's work cut short (by a signal handler's exception in
        # the caller's thread): the pump mends before it reads on (WaitHere._mend).
        self._unfinished = False
        self._failed_here: BaseException | None = None  # a helper's own failure (cut_here)
        # No server took a connection since then (0: they do), and when to try again.
        self._down_since = self._retry_at = 0.0

    # -- called from other threads --

    def put(self, item: WorkItem, *, hold: bool = False) -> None:
        """Hand a call over. ``hold``: only queue it, for a caller that hands over more at
        once (map) and calls ``nudge`` when done, so that the calls go out in batches
        rather than one send each from the caller's thread."""
        try:
            self._pending.append(item)
            if not hold:
                self.nudge()
        except BaseException:  # a Ctrl-C before nudge's guard: the sleeping pump sends it
            self._wake()
            raise

    def nudge(self) -> None:
        """Make sure the pump sends what is queued: from this thread when it sleeps."""
        if not self._sleeping or self.reading_here():
            # The pump is busy, or this thread reads in wait_here, holding the pump's
            # lock: either looks at the deque before it waits again.
            return
        # The pump sleeps in select: send the call from this thread, with no hop to the
        # pump and back (its reply wakes the pump, which reads it). The lock is free only
        # while the pump waits in select; if it is busy after all, a wake-up byte it is.
        try:
            with whole():  # a Ctrl-C waits until the calls are sent and the lock is free again
                if self._send_here():
                    return
        except BaseException as exc:
            # A Ctrl-C before (or after) the work: the pump sends what waits. Anything else
            # that cut the work short: the pump mends first (WaitHere._mend), or breaks.
            if self.cut_here(exc):
                raise
            return
        self._wake()  # _sleeping was set before the pump's last look: it will see a byte

    def take_pending(self) -> list[WorkItem]:
        """Remove and return the items not sent yet (shutdown's cancel_futures)."""
        taken = []
        while True:
            try:
                taken.append(self._pending.popleft())
            except IndexError:
                return taken

    def put_back(self, items: list[WorkItem]) -> None:
        """Queue calls again, first (a batch left them unrun; shutdown kept them)."""
        if items:
            self._pending.extendleft(reversed(items))
            self._wake()

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
            self._finished()

    def _finished(self) -> None:
        hook, self.on_finished = self.on_finished, None
        if hook is not None:
            try:
                hook()
            except Exception:  # removing files: nothing a caller waits on
                log.exception("farm executor: cleaning up after the pump failed")

    def forget(self) -> None:
        """In a child forked from this pump's process: let go of the parent's connections
        and wake-up pipe without a word on them (closing the child's copies of the
        descriptors leaves the parent's open), and never wake the parent's thread. Only new
        objects are touched: a lock of the parent's may have been held across the fork."""
        self.started = False
        self.on_finished = None  # the parent's files are the parent's to remove
        self._sleeping = False  # wait_here and nudge leave it alone from now on
        self._stopping = True
        self.finished = threading.Event()
        self.finished.set()
        for conn in self._conns.values():
            conn.sock.close()
        self._conns = {}
        self._dials = {}  # their threads stayed in the parent
        self._callbacks_due = deque()  # the parent's futures, settled in its own pump
        self._selector.close()
        self._waker.close()

    def _wake(self) -> None:
        self._waker.wake()

    wake = _wake  # the executor's, after a Ctrl-C in its nudge (Executor._nudge)

    # -- the loop --

    def run(self) -> None:
        if not self._running.acquire(blocking=False):
            # A second thread (Executor._start_pump): two would share the sockets, the
            # first to end closing them under the other. It waits, so joining it waits.
            threading.current_thread().name += " (spare: another thread runs the pump)"
            with self._running:
                return
        lock = self._lock
        lock.acquire()
        try:
            while True:
                if self._callbacks_due:  # settled by a thread doing the pump's work
                    self._call_back()
                if self._dials:  # a connect ended (it woke us), or is under way
                    self._adopt_connects()
                self._send_pending()
                self._flush()
                if self._idle_and_stopping():
                    break
                self._sleeping = True
                retry = self._retry_at and max(0.0, self._retry_at - time.monotonic())
                # Calls that wait for a connect under way sleep too: its end wakes the pump.
                if (
                    self._pending
                    and self._in_flight < self._refill_below
                    and not (retry or self._waiting_for_connect())
                ):
                    self._sleeping = False  # something arrived since we looked: no sleep
                    continue
                lock.release()
                try:
                    ready = self._selector.select(retry if self._pending and retry else None)
                finally:
                    lock.acquire()
                self._sleeping = False
                if self._failed_here is not None:  # a helper's own failure: break here
                    raise self._failed_here
                if self._unfinished:  # what it read may be closed now: the next select says
                    self._mend()
                    continue
                for data, mask in ready:
                    if data is None:
                        self._waker.drain()
                        continue
                    if mask & WRITE:
                        self._write(data)
                    if mask & READ:
                        self._read(data)
        except InitializerFailed as exc:  # no bug: the pool breaks, as ProcessPoolExecutor's
            # No worker's traceback: initnews' WorkerLost, two workers dead in it (none raised).
            if not isinstance(exc.error.__cause__, RemoteTraceback):
                logged = why = "workers died in the executor's initializer"
            else:
                logged = "the initializer failed in a worker"
                why = "the executor's initializer failed in a worker"
            log.critical("farm executor: %s%s", logged, _cause_text(exc))
            self._break(f"{why}: {exc}; the executor is broken", exc.error)
        except BaseException as exc:  # a bug (or a done-callback raising SystemExit) here
            log.exception("farm executor pump failed")  # must not leave callers waiting forever
            self._break(f"the executor's pump thread failed: {describe(exc)}", exc)
        finally:
            try:
                self._call_back(last=True)
                self._close_all()
                self._selector.close()
                self._waker.close()
            finally:
                self._sleeping = False  # no submitter may send through closed sockets
                lock.release()
                self.finished.set()
                self._finished()
                self._running.release()

    def _idle_and_stopping(self) -> bool:
        return self._stopping and not self._pending and not self._in_flight

    # -- sending --

    def _send_pending(self) -> None:
        pending = self._pending
        if self._in_flight >= self._refill_below:
            return
        flights = self._flights
        while pending and self._in_flight < self.max_in_flight:
            if self._retry_at and self._retry_at > time.monotonic():
                return  # waiting for a server to come back
            try:
                conn = self._connection()
            except ServerUnavailable as exc:
                if self._may_come_back():
                    return
                conn, down = None, ServerUnavailable(f"{exc}, for {self.connect_timeout:g}s")
            else:
                if conn is None:
                    return  # only connects under way: the end of each wakes the pump
            flight = Flight([])
            flights.add(flight)  # before a call leaves the deque: _break finds it anywhere
            items = take(pending, flight.items, self.max_batch, self.workers)
            if not items:
                flights.discard(flight)
                continue  # all cancelled while they waited here
            if conn is None:
                for item in items:
                    item.future.set_exception(down)
                flights.discard(flight)
                continue
            payload = flight.payload(self.signer, self.call_ttl, self.setup)
            task: Task[Flight] = Task(self.function, payload, priority=self.priority)
            task.owner = flight
            conn.session.submit(task)
            self._in_flight += 1
        if self._down_since and not pending and self._retry_at <= time.monotonic():
            self._down_since = self._retry_at = 0.0  # all failed: the next calls wait anew

    # -- receiving --

    def _read(self, conn: Conn) -> None:
        if self._conns.get(conn.addr) is not conn:
            return  # dropped by a write error in this same turn
        try:
            data = conn.sock.recv(READ_SIZE)
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
                # A batch cut short by its pool's timeout: the calls it left go again, first.
                self.put_back(complete(event.task, self.signer))
                self._flights.discard(flight_of(event.task))  # not before: _break still finds it
            elif isinstance(event, JobData):  # outcomes so far, or calls given back
                self.put_back(partial(event.task, self.signer, event.data))
            # A JobWarning needs nothing here: the session keeps the last one for the
            # JobFailed that may follow (flight.complete's WorkerLost quotes it).

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


def _cause_text(exc: InitializerFailed) -> str:
    cause = exc.error.__cause__
    return f":{cause}" if isinstance(cause, RemoteTraceback) else f": {exc}"
