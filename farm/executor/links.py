"""The pump's connections to its job servers: which one the next job goes to, and
waiting for one to come back.

A mixin of ``farm.executor.pump.Pump``. Calls that have not left the executor wait
for a server that refuses connections (a supervised server is back within a second of
a crash) for up to ``connect_timeout``; only then do they fail.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from farm.client.serverpick import ServerPicker
from farm.errors import ServerUnavailable
from farm.executor.poller import READ, Poller
from farm.net import connect
from farm.protocol import OPTION_LAZY_CREATED
from farm.protocol.client import ClientSession

__all__ = ["Conn", "Links", "RETRY_EVERY"]

#: Seconds between tries to reach a server while calls wait for one (see _may_come_back).
RETRY_EVERY = 0.1


class Conn:
    """One server connection of the pump: its socket, session and unsent bytes."""

    __slots__ = ("addr", "sock", "session", "out", "events")

    def __init__(self, addr: str, sock: socket.socket) -> None:
        self.addr = addr
        self.sock = sock
        self.session = ClientSession(addr)
        self.out = bytearray()  # bytes the kernel did not take yet (we never block on send)
        self.events = READ


class Links:
    """Choosing and opening the pump's connections (declared: what Pump gives it)."""

    connect_timeout: float
    _conns: dict[str, Conn]
    _picker: ServerPicker
    _selector: Poller
    _down_since: float  # no server took a connection since then (0: they do)
    _retry_at: float  # when to try again
    _wake: Callable[[], None]

    def _may_come_back(self) -> bool:
        """No server takes a connection. The calls waiting here never left, so they wait
        for one (a supervised server is back within a second of a crash) for up to
        connect_timeout, tried every RETRY_EVERY seconds; then they fail."""
        now = time.monotonic()
        self._down_since = self._down_since or now
        if now - self._down_since >= self.connect_timeout:
            return False
        self._retry_at = now + RETRY_EVERY
        self._wake()  # the pump thread sleeps until then (this may be another thread)
        return True

    def _connection(self) -> Conn:
        """A connection for the next job: rotate over servers, skipping refusing ones."""
        tried = []
        for addr in self._picker.order():
            conn = self._conns.get(addr)
            if conn is not None:
                if self._down_since:  # a server took a connection: calls go out again
                    self._down_since = self._retry_at = 0.0
                return conn
            began = time.monotonic()
            try:
                sock = connect(addr, self.connect_timeout)
            except OSError as exc:
                tried.append(f"{addr} ({exc.strerror or exc})")
                self._picker.mark_down(addr, spent=time.monotonic() - began)
                continue
            sock.setblocking(False)
            self._picker.mark_up(addr)  # its next failure starts over from DOWN_FOR
            self._down_since = self._retry_at = 0.0
            conn = self._conns[addr] = Conn(addr, sock)
            conn.session.option("exceptions")  # WORK_EXCEPTION, not WORK_FAIL, for refusals
            # No wake-up for a JOB_CREATED alone: it may ride with the job's result (farm's
            # extension, docs/held-grab.md; gearmand refuses it and nothing changes).
            conn.session.option(OPTION_LAZY_CREATED.decode())
            self._selector.register(sock.fileno(), READ, conn)
            return conn
        raise ServerUnavailable("no job server is reachable; tried " + ", ".join(tried))
