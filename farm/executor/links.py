"""The pump's connections to its job servers: which one the next job goes to, opening
one without holding the others, waiting for one to come back, and losing one.

A mixin of ``farm.executor.pump.Pump``; it also writes each connection's bytes of a
turn (``_flush``). Calls that have not left the executor wait
for a server that refuses connections (a supervised server is restarted at once, and
with a backoff up to 30 s when it keeps crashing) for up to ``connect_timeout``; only
then do they fail. A TCP connect runs in a thread of its own (``farm.net.Dial``): a
host that answers none (down, or behind a firewall that drops our packets) would
otherwise hold every call, and the replies coming on the other connections, for
``connect_timeout`` each time the pump tried it.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from farm.client.serverpick import ServerPicker
from farm.errors import ServerUnavailable
from farm.executor.flight import Flight, flight_of
from farm.executor.poller import READ, WRITE, Poller
from farm.net import Dial, connect, keep_alive, parse_address
from farm.protocol import OPTION_FAIL_REASON, OPTION_LAZY_CREATED
from farm.protocol.client import ClientSession, lost_error

__all__ = ["Conn", "Links", "RETRY_EVERY"]

log = logging.getLogger("farm.executor")

#: Seconds between tries to reach a server while calls wait for one (see _may_come_back).
RETRY_EVERY = 0.1
#: What a connection with bytes the kernel has not taken yet waits for.
READ_WRITE = READ | WRITE


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
    """Choosing, opening and losing the pump's connections (declared: what Pump gives it)."""

    connect_timeout: float
    _conns: dict[str, Conn]
    _dials: dict[str, Dial]  # TCP connects under way, each in a thread of its own
    _awaiting = False  # the last _connection found none open, but connects under way
    # While none is open: the servers that failed since every server was last tried, with
    # why. A refusing one tried again while another's connect went on kept some connect
    # under way for ever, and the calls waited for ever.
    _refused: dict[str, str]
    _picker: ServerPicker
    _selector: Poller
    _down_since: float  # no server took a connection since then (0: they do)
    _retry_at: float  # when to try again
    _in_flight: int
    _flights: set[Flight]
    _wake: Callable[[], None]
    #: Given the call ids of the flights a lost server held (the executor's
    #: CallerFiles.remove_results: result files no one will read now).
    on_lost: Callable[[list[bytes]], None] | None = None

    def _may_come_back(self) -> bool:
        """No server takes a connection. The calls waiting here never left, so they wait
        for one (a supervised server is restarted at once, and with a backoff up to 30 s
        when it keeps crashing) for up to connect_timeout, tried every RETRY_EVERY seconds;
        then they fail."""
        now = time.monotonic()
        self._down_since = self._down_since or now
        if now - self._down_since >= self.connect_timeout:
            return False
        self._retry_at = now + RETRY_EVERY
        self._wake()  # the pump thread sleeps until then (this may be another thread)
        return True

    def _connection(self) -> Conn | None:
        """A connection for the next job: rotate over servers, skipping refusing ones and
        those still connecting. None: only connects under way are left (the end of each
        wakes the pump); ServerUnavailable: every server failed."""
        awaiting = False
        for addr in self._picker.order():
            conn = self._conns.get(addr)
            if conn is not None:
                # The usual case, as cheap as it was: _awaiting is False here, as it is True
                # only while no connection is open (_opened clears it).
                if self._down_since:  # a server took a connection: calls go out again
                    self._down_since = self._retry_at = 0.0
                return conn
            if addr in self._refused:
                continue  # not again before the others' connects end too
            outcome, spent = self._connect(addr)
            if outcome is None:
                awaiting = True
            elif isinstance(outcome, OSError):
                self._picker.mark_down(addr, spent=spent)
                if not self._conns:  # (with one open, calls go there and no round ends)
                    self._refused[addr] = f"{addr} ({outcome.strerror or outcome})"
            else:
                return self._opened(addr, outcome)
        self._awaiting = awaiting
        if awaiting:
            return None
        tried, self._refused = ", ".join(self._refused.values()), {}
        raise ServerUnavailable("no job server is reachable; tried " + tried)

    def _waiting_for_connect(self) -> bool:
        """No connection is open and a connect is still under way: the pump may sleep, as
        the end of that connect wakes it (``Dial`` sets its outcome, then wakes)."""
        return self._awaiting and any(dial.outcome is None for dial in self._dials.values())

    def _connect(self, addr: str) -> tuple[socket.socket | OSError | None, float]:
        """Connect to ``addr``: the socket or the error, and the seconds it took; None while
        its connect is under way. A Unix socket (the local farm, the usual lone server)
        connects or is refused at once, so it connects here: no thread, no wake-up. A TCP
        connect starts in a thread; a later call takes its outcome."""
        dial = self._dials.get(addr)
        if dial is not None:
            if dial.outcome is None:
                return None, 0.0
            del self._dials[addr]
            return dial.outcome, dial.took
        if parse_address(addr).kind == "tcp":
            self._dials[addr] = Dial(addr, self.connect_timeout, None, self._wake)
            return None, 0.0
        began = time.monotonic()
        try:
            return connect(addr, self.connect_timeout), 0.0
        except OSError as exc:
            return exc, time.monotonic() - began

    def _adopt_connects(self) -> None:
        """Open each TCP connect that ended with a socket, as soon as its end wakes the
        pump, whether or not a call waits for it. One that no call took yet (the first call
        went out on another server, and none came after it) was left unwatched: a server
        that restarted meanwhile closed it unseen, and the next call for that server was
        sent on it and failed (write failed: it may have run). Open, its close is read at
        once, and the call goes on a new connection."""
        for addr, dial in list(self._dials.items()):
            if isinstance(dial.outcome, socket.socket):
                del self._dials[addr]
                self._opened(addr, dial.outcome)

    def _opened(self, addr: str, sock: socket.socket) -> Conn:
        self._awaiting, self._refused = False, {}
        sock.setblocking(False)
        # A server whose host died or whose network was cut sends no FIN nor RST: with no
        # keepalive its calls waited for ever, as an idle worker did (farm.net; a Unix
        # socket is left as it is).
        keep_alive(sock)
        self._picker.mark_up(addr)  # its next failure starts over from DOWN_FOR
        self._down_since = self._retry_at = 0.0
        conn = self._conns[addr] = Conn(addr, sock)
        conn.session.option("exceptions")  # WORK_EXCEPTION, not WORK_FAIL, for refusals
        # No wake-up for a JOB_CREATED alone: it may ride with the job's result (farm's
        # extension, docs/held-grab.md; gearmand refuses it and nothing changes).
        conn.session.option(OPTION_LAZY_CREATED.decode())
        conn.session.option(OPTION_FAIL_REASON.decode())  # why the server failed a job
        self._selector.register(sock.fileno(), READ, conn)
        return conn

    # -- sending --

    def _flush(self) -> None:
        """Each connection's bytes of this turn, in one send each (what the kernel does
        not take waits for the socket to drain: the pump never blocks on a send)."""
        for conn in list(self._conns.values()):
            conn.out += conn.session.data_to_send()
            if conn.out:
                self._write(conn)

    def _write(self, conn: Conn) -> None:
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
            self._selector.modify(conn.sock.fileno(), events, conn)

    # -- losing connections --

    def _close(self, conn: Conn) -> None:
        if self._conns.get(conn.addr) is conn:
            del self._conns[conn.addr]
            self._selector.unregister(conn.sock.fileno())
        conn.sock.close()

    def _close_all(self) -> None:
        """The pump ends: close its connections, and those still being made as they come."""
        for conn in list(self._conns.values()):
            self._close(conn)
        for dial in self._dials.values():
            dial.cancel()
        self._dials.clear()

    def _drop(self, conn: Conn, why: str, *, servers_fault: bool = True) -> None:
        """The server went away: every call it held fails (it may or may not have run).
        Not ``servers_fault``: we closed it (WaitHere._mend), the server is not tried last."""
        self._close(conn)
        if servers_fault:
            self._picker.mark_down(conn.addr)
        # What the kernel never took: a call in it was not sent whole, created nothing.
        lost_tasks = conn.session.connection_lost(why, len(conn.out))
        # One that held no call is what every routine restart of a server looks like (the
        # executor keeps a connection to each): no call failed, nothing to warn of.
        log.log(logging.WARNING if lost_tasks else logging.INFO, "job server %s %s", conn.addr, why)
        for task in lost_tasks:
            self._in_flight -= 1
            lost = lost_error(conn.addr, task, why)  # its handle may not have come yet
            flight = flight_of(task)
            flight.fail(lost)
            self._flights.discard(flight)
        if lost_tasks and self.on_lost is not None:
            try:
                self.on_lost([flight_of(task).call_id for task in lost_tasks])
            except Exception:  # files (a spill directory made unreadable): no call waits
                log.exception("farm executor: removing the result files of lost calls failed")
