"""A thread waiting in ``result()`` reads its own reply while the pump thread sleeps
(and a submitting thread sends its own call: ``_send_here``).

The reply then wakes the thread that wants it, not the pump thread, which would wake it
in turn: one process wake-up fewer for a call waited on with ``result()``. The waiting
thread takes the pump's lock (free only while the pump sleeps in select), mutes the
connections in the pump's epoll (farm/executor/poller.py) so the pump sleeps on through
the replies, and does what a pump turn does after reading. It hands back to the pump
thread as soon as anything but reading is to be done. A future it settles has its
done-callbacks run by the pump thread (``call_later``), as ProcessPoolExecutor's manager
thread runs them: in the waiting thread they held ``result()`` up, and deadlocked it when
they took a lock the caller held.

Such a turn cut short by an exception (a signal handler's: a web request's alarm, gunicorn's
``sys.exit``; a Ctrl-C is held until the turn is whole, farm.executor.interrupts) leaves
the pump's state half updated: a reply read and not decoded, a call taken from the queue
and not sent, bytes sent twice. ``_unfinished``, set as the turn begins and cleared as it
ends, tells the pump thread so, whatever the exception and wherever it landed; the pump
then mends (``_mend``): it drops every connection, as it would a server's that went away,
failing the calls in flight (the turn refilled and wrote to each), and the next calls
connect anew. The exception goes on to the caller. Holding signals instead
(``pthread_sigmask``) costs two system calls a turn (some 7 µs from Python, more than half
a tiny call's whole cost in the caller), and holds nothing back from another thread, where
a process's signal is delivered as readily and its Python handler then runs in the main
thread all the same. A mixin of :class:`farm.executor.pump.Pump`, split off along this
seam.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import PENDING, RUNNING
from typing import Any, Protocol

from farm.errors import ServerUnavailable
from farm.executor.flight import Flight, InitializerFailed, WorkItem
from farm.executor.interrupts import whole
from farm.executor.poller import READ, Poller
from farm.waker import Waker

__all__ = ["WaitHere"]

log = logging.getLogger("farm.executor")


class Link(Protocol):
    """What this reads of the pump's connection (farm.executor.links.Conn)."""

    addr: str
    sock: socket.socket
    events: int  # what the pump's epoll waits for on it (READ, or READ | WRITE)


class Settled(Protocol):
    """What this calls of a future settled with callbacks (farm.executor.futures.CallFuture)."""

    def run_callbacks(self) -> bool: ...


class WaitHere:
    """Another thread's turn at the pump's work (see the module docstring)."""

    # The pump's, read and written here (declared for the type checker).
    _sleeping: bool
    _stopping: bool
    # Held by the pump thread except while it sleeps; a helper that takes it asks whether
    # it holds it (RLock._is_owned) rather than trusting a flag set after acquire(): an
    # exception (a signal handler's) can land as acquire() returns, before the next line,
    # and a lock left taken so held the pump thread, and every call, for ever.
    _lock: Any  # threading.RLock
    _selector: Poller
    _waker: Waker
    _conns: dict[str, Any]  # addr -> the pump's connection, a Link
    _reader: int  # the thread reading replies in wait_here, if any (its ident)
    _helper: int  # the thread doing the pump's work in its stead (reading, a submit's send)
    _callbacks_due: deque[Settled]  # futures whose callbacks a helper left to the pump
    _pending: deque[WorkItem]
    # A helper's turn at the pump's work began and did not end whole (see the docstring).
    _unfinished: bool
    _failed_here: BaseException | None  # a helper's own failure: the pump thread breaks
    _flights: set[Flight]
    _in_flight: int
    broken: str | None
    _read: Callable[[Any], None]
    _send_pending: Callable[[], None]
    _flush: Callable[[], None]
    _drop: Callable[..., None]  # (conn, why, *, servers_fault)
    _wake: Callable[[], None]

    def wait_here(self, future: Future[Any], timeout: float | None) -> None:
        """Wait up to ``timeout`` for ``future`` in the calling thread, reading replies here,
        when the pump thread is asleep: the reply then wakes the thread that wants it, not
        the pump thread, which would wake it in turn (one hop fewer for a call waited on
        with ``result()``). Returns early, leaving the rest to the pump thread, when
        another thread hands it work or anything but reading is to be done."""
        if not (self._sleeping and self._selector.can_mute):
            return
        lock = self._lock
        try:
            if not lock.acquire(blocking=False):
                return
            if not self._sleeping or self.broken is not None or self._stopping:
                return
            if self._unfinished:  # a turn cut short: the pump mends first
                self._wake()
                return
            conns = {conn.sock.fileno(): conn for conn in self._conns.values()}
            if not conns or any(conn.events != READ for conn in conns.values()):
                return
            self._wait_reading(future, conns, timeout)
        finally:
            if lock._is_owned():  # (see _lock)
                lock.release()

    def _wait_reading(
        self, future: Future[Any], conns: dict[int, Link], timeout: float | None
    ) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = self._waker.reader.fileno()
        self._reader = self._helper = threading.get_ident()
        try:  # from here: cut as poll() returns, the fields stayed set, and sends waited
            local = select.poll()
            local.register(waker, select.POLLIN)
            for fd in conns:
                self._selector.mute(fd)  # the pump thread sleeps on through the replies
                local.register(fd, select.POLLIN)
            # Its state read without the future's lock (done() takes it, a turn each): a
            # cancel() from another thread comes with interrupt_reader's wake-up byte.
            while future._state == PENDING or future._state == RUNNING:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = local.poll(None if left is None else left * 1000)
                if not ready:
                    return  # timed out: result() raises TimeoutError
                for fd, _ in ready:
                    if fd == waker:
                        return  # new work: the pump thread, already woken, takes over
                try:
                    with whole():  # a Ctrl-C waits until this turn's bookkeeping is done
                        self._unfinished = True  # left set if anything cuts the turn short
                        for fd, _ in ready:
                            self._read(conns[fd])
                        # What a pump turn does after reading: refill the window.
                        self._send_pending()
                        self._flush()
                        self._unfinished = False
                except BaseException as exc:
                    if self.cut_here(exc):
                        raise
                    return  # result() says what broke the executor
                if (
                    self.broken is not None
                    or len(self._conns) != len(conns)  # a new connection: the pump's to read
                    or any(
                        self._conns.get(conn.addr) is not conn or conn.events != READ
                        for conn in conns.values()
                    )
                ):
                    return  # a connection dropped or came, or output waits: the pump's business
        finally:
            self._reader = self._helper = 0
            unfinished, self._unfinished = self._unfinished, True  # a muted one stays unread
            try:
                for fd, conn in conns.items():
                    if self._conns.get(conn.addr) is conn:
                        self._selector.modify(fd, conn.events, conn)
            except BaseException:
                self._wake()  # the pump mends
                raise
            self._unfinished = unfinished

    def cut_here(self, exc: BaseException) -> bool:
        """A helper's turn at the pump's work ended by ``exc``: whether it goes on to the
        caller. In the main thread, where signal handlers run (a request's alarm, gunicorn's
        sys.exit), it does, and the pump thread mends what the turn left (``_unfinished``).
        Anywhere else no handler runs, so it is the executor's own failure (the
        initializer's, InitializerFailed, or a bug): handed to the pump thread, which breaks
        the executor as when it fails itself; so does the initializer's in the main thread."""
        main = threading.current_thread() is threading.main_thread()
        if isinstance(exc, InitializerFailed) or not main:
            self._failed_here = exc
        self._wake()
        return self._failed_here is not exc

    def _send_here(self) -> bool:
        """Send what waits from this thread if the pump sleeps (False: it does not): a
        submit's turn at the pump's work (Pump.nudge)."""
        lock = self._lock
        try:
            if not lock.acquire(blocking=False):
                return False
            if not (self._sleeping and self.broken is None and not self._unfinished):
                return False  # (a turn cut short: the pump mends, then sends)
            self._helper = threading.get_ident()  # the calls it fails: callbacks to the pump
            self._unfinished = True  # left set if anything cuts the turn short
            self._send_pending()
            self._flush()
            self._unfinished = False
            return True
        finally:
            if lock._is_owned():  # (see _lock)
                self._helper = 0
                lock.release()

    def _mend(self) -> None:
        """In the pump thread: a helper's turn was cut short (``_unfinished``). Drop every
        connection, failing the calls each held (they may or may not have run), and the
        calls the turn had taken from the queue and not sent; the next calls connect anew.
        As farm.Client drops a connection whose read or send was cut short."""
        self._unfinished = False
        why = "connection closed by the executor: an exception cut short a caller's work on it"
        for conn in list(self._conns.values()):
            self._drop(conn, why, servers_fault=False)
        if self._flights:  # taken from the queue and never sent, or their news half read
            lost = ServerUnavailable(f"farm executor: the call's {why}")
            log.warning("farm executor: %d jobs failed: %s", len(self._flights), lost)
            # Not those a batch's end put back in the queue (the turn was cut short before
            # it forgot its flight): they go again, and a settled one there broke the pump.
            queued = {id(item) for item in list(self._pending)}  # a copy: others append
            for flight in self._flights:
                for item in flight.items:
                    if id(item) not in queued and not item.future.done():
                        item.future.set_exception(lost)
            self._flights.clear()
        self._in_flight = 0  # no connection: nothing in flight, whatever the count was told

    def reading_here(self) -> bool:
        """Whether the calling thread reads replies in wait_here."""
        return self._reader == threading.get_ident()

    def helping_here(self) -> bool:
        """Whether the calling thread does the pump's work in its stead (reads replies in
        wait_here, or sends its calls in nudge): the futures it settles leave their
        done-callbacks to the pump thread."""
        return self._helper == threading.get_ident()

    def call_later(self, future: Settled) -> None:
        """Have the pump thread run ``future``'s done-callbacks (a helper settled it; it
        holds the pump's lock, so the pump runs them once that thread lets go). The
        wake-up also ends a wait_here: the waiting thread hands back to the pump."""
        self._callbacks_due.append(future)
        self._wake()

    def _call_back(self, *, last: bool = False) -> None:
        """In the pump thread: run the callbacks that helpers left to it, in the order the
        futures were settled. ``last``: the pump is ending; one that raises is logged, and
        the others run all the same."""
        due = self._callbacks_due
        while due:
            future = due.popleft()
            if not last:
                future.run_callbacks()  # SystemExit breaks the pump, as in its own reading
                continue
            try:
                future.run_callbacks()
            except BaseException:
                log.exception("farm executor: a done-callback failed as the pump ended")

    def interrupt_reader(self) -> None:
        """Make a thread waiting in wait_here look again (a future it waits for was
        cancelled from elsewhere): it returns, and the Future's own wait sees the state."""
        if self._reader:
            self._wake()
