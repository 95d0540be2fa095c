"""A thread waiting in ``result()`` reads its own reply while the pump thread sleeps.

The reply then wakes the thread that wants it, not the pump thread, which would wake it
in turn: one process wake-up fewer for a call waited on with ``result()``. The waiting
thread takes the pump's lock (free only while the pump sleeps in select), mutes the
connections in the pump's epoll (farm/executor/poller.py) so the pump sleeps on through
the replies, and does what a pump turn does after reading. It hands back to the pump
thread as soon as anything but reading is to be done. A mixin of
:class:`farm.executor.pump.Pump`, split off along this seam.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import PENDING, RUNNING
from typing import Any, Protocol

from farm.executor.interrupts import whole
from farm.executor.poller import READ, Poller
from farm.waker import Waker

__all__ = ["WaitHere"]


class Link(Protocol):
    """What this reads of the pump's connection (farm.executor.links.Conn)."""

    addr: str
    sock: socket.socket
    events: int  # what the pump's epoll waits for on it (READ, or READ | WRITE)


class WaitHere:
    """The waiting thread's turn at the pump's work (see the module docstring)."""

    # The pump's, read and written here (declared for the type checker).
    _sleeping: bool
    _stopping: bool
    _lock: threading.Lock
    _selector: Poller
    _waker: Waker
    _conns: dict[str, Any]  # addr -> the pump's connection, a Link
    _reader: int  # the thread reading replies in wait_here, if any (its ident)
    broken: str | None
    _read: Callable[[Any], None]
    _send_pending: Callable[[], None]
    _flush: Callable[[], None]
    _defer: Callable[[BaseException], None]
    _wake: Callable[[], None]

    def wait_here(self, future: Future[Any], timeout: float | None) -> None:
        """Wait up to ``timeout`` for ``future`` in the calling thread, reading replies here,
        when the pump thread is asleep: the reply then wakes the thread that wants it, not
        the pump thread, which would wake it in turn (one hop fewer for a call waited on
        with ``result()``). Returns early, leaving the rest to the pump thread, when
        another thread hands it work or anything but reading is to be done."""
        if not (self._sleeping and self._selector.can_mute):
            return
        taken = False
        try:
            with whole():  # a Ctrl-C right after acquire() would leave the lock taken for good
                taken = self._lock.acquire(blocking=False)
            if not taken:
                return
            if not self._sleeping or self.broken is not None or self._stopping:
                return
            conns = {conn.sock.fileno(): conn for conn in self._conns.values()}
            if not conns or any(conn.events != READ for conn in conns.values()):
                return
            self._wait_reading(future, conns, timeout)
        finally:
            if taken:
                self._lock.release()

    def _wait_reading(
        self, future: Future[Any], conns: dict[int, Link], timeout: float | None
    ) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = self._waker.reader.fileno()
        self._reader = threading.get_ident()
        local = select.poll()
        local.register(waker, select.POLLIN)
        try:
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
                guard = whole()
                try:
                    with guard:  # a Ctrl-C waits until this turn's bookkeeping is done
                        for fd, _ in ready:
                            self._read(conns[fd])
                        # What a pump turn does after reading: refill the window.
                        self._send_pending()
                        self._flush()
                except BaseException as exc:
                    if not guard.half_done(exc):
                        raise  # a Ctrl-C held until the turn was whole, or out of it
                    # Half-done bookkeeping (or a done-callback raising SystemExit, which
                    # breaks the executor as when the pump thread runs it).
                    self._defer(exc)
                    return
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
            self._reader = 0
            for fd, conn in conns.items():
                if self._conns.get(conn.addr) is conn:
                    self._selector.modify(fd, conn.events, conn)

    def reading_here(self) -> bool:
        """Whether the calling thread reads replies in wait_here (it runs done-callbacks)."""
        return self._reader == threading.get_ident()

    def interrupt_reader(self) -> None:
        """Make a thread waiting in wait_here look again (a future it waits for was
        cancelled from elsewhere): it returns, and the Future's own wait sees the state."""
        if self._reader:
            self._wake()
