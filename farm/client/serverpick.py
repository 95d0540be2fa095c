"""Which job server to try, in what order: one rule for every client face.

A job with a unique key always starts at the same server (so retries and joiners meet
the same queue); others rotate over the servers not marked down, past a server that is
not taking our bytes (``busy``). A server that refused or dropped a connection, or left
a request unanswered for its caller's timeout (``mark_down``), is tried last for
``DOWN_FOR`` seconds, or for ``COST_FACTOR`` times what finding it down cost if longer
(a connect nothing answers takes connect_timeout), and for twice as long as the last
time at each failure in a row, up to ``DOWN_MAX``: a client calling every second paid
the whole connect_timeout of a dead host each time its 2 s were up (python-gearman 1.x
left a failed server alone for 120 s).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Collection

from farm.protocol.codec import text_bytes

__all__ = [
    "COST_FACTOR",
    "DOWN_FOR",
    "DOWN_MAX",
    "FAR_CONNECT",
    "MIN_CONNECT",
    "STAGGER",
    "ServerPicker",
    "connect_share",
    "job_key",
    "key_slot",
]

#: A server marked down (refused, dropped, or did not answer) is tried last for this long (s).
DOWN_FOR = 2.0
#: The longest a server is tried last for, however often it failed in a row (s).
DOWN_MAX = 60.0
#: A failed try that waited (a connect nothing answers takes connect_timeout) puts its
#: server last for this many times that wait: such a host then costs the calls a tenth of
#: the time at most, from its first failure on (up to DOWN_MAX).
COST_FACTOR = 10
#: The least a connect waits, however little of its caller's timeout is left (one to a
#: server on this host succeeds at once; one nothing answers is bounded by the timeout).
MIN_CONNECT = 0.05
#: What a connect to a far server may need: a TCP and a TLS handshake, 40 ms round trips.
FAR_CONNECT = 0.3
#: How long a server has to answer a question any server may answer (a job's status by
#: handle or key; farm.Executor's admin ``status``) before the next one is asked too (RFC
#: 8305's Connection Attempt Delay: a live server on this network answers in milliseconds).
STAGGER = 0.25


def job_key(unique: str, data: bytes) -> str | bytes:
    """What a job is placed by: its unique key, but for ``-`` its payload, which the server
    takes for its key, as gearmand does (docs/gearmand-probes.md): placed by the literal
    ``-``, every such job started at one server. An empty payload with ``-`` never
    coalesces, so it has no key (rotates)."""
    if unique == "-":
        return data
    return unique


def key_slot(key: str | bytes, count: int) -> int:
    """Which of ``count`` servers a job keyed ``key`` (``job_key``) starts at: the 15 bits
    that Perl's Gearman::Client takes of the key's CRC-32 (``Gearman::Task::hash``), so
    that a key submitted from Perl and from farm meets at one server and joins one job
    (libgearman hashes no key: it sends every job to one server while it is up)."""
    # A key's bytes as they go out (text_bytes): a raw digest a PHP client sent, handed
    # over by farm.Worker as os.fsdecode does, is placed as Perl's is.
    data = text_bytes(key) if isinstance(key, str) else key
    return (zlib.crc32(data) >> 16 & 0x7FFF) % count


def connect_share(deadline: float | None, now: float, servers_left: int) -> float | None:
    """When one connect gives up, so that the servers after it still get their turn: the
    time left before ``deadline`` shared evenly among the ``servers_left`` still to try,
    this one included (a host that is down must not spend a call's timeout that a live
    server behind it could have used), but FAR_CONNECT at least where the others keep
    MIN_CONNECT each (a live server a TLS handshake away must not be cut off at a third of
    a short timeout). None: no deadline."""
    if deadline is None:
        return None
    left, after = deadline - now, max(servers_left, 1) - 1
    return now + max(left / (after + 1), min(left - MIN_CONNECT * after, FAR_CONNECT))


class ServerPicker:
    """Orders ``servers`` for one attempt; remembers which ones recently failed."""

    def __init__(self, servers: list[str]) -> None:
        self.servers = servers
        self._down_until: dict[str, float] = {}
        self._down_for: dict[str, float] = {}  # how long its last failure put it last for
        self._rotation = 0

    def order(
        self,
        unique: str | bytes = "",
        exclude: str | Collection[str] | None = None,
        busy: Collection[str] = (),
    ) -> list[str]:
        """Servers in the order to try: a stable start per unique key (``job_key``), live
        ones first.

        ``busy`` servers (not taking our bytes now: AsyncClient's paused connections) go
        after the other live ones for a job without a key; a keyed job keeps its server,
        where a submit of the same key meets it. ``exclude``: a server, or several (those
        that cut a submit short: ``not_again``), not to try."""
        servers = self.servers
        excluded: Collection[str] = (exclude,) if isinstance(exclude, str) else exclude or ()
        if len(servers) == 1:  # the usual farm: nothing to rotate or rank (each job asks)
            return [] if servers[0] in excluded else [servers[0]]
        now = time.monotonic()
        down = {a for a in servers if self._down_until.get(a, 0) > now}
        if unique:
            start = key_slot(unique, len(servers))
            ring = servers[start:] + servers[:start]
            busy = ()
        else:
            # The rotation goes over the live servers alone: over all of them, a down
            # server's turns each fell to the live one after it (of three servers with one
            # down, that one took two jobs in three, the other one).
            live = [a for a in servers if a not in down]
            start = self._rotation % max(len(live), 1)
            self._rotation += 1
            ring = live[start:] + live[:start] + [a for a in servers if a in down]
        order = [a for a in ring if a not in excluded]

        def rank(addr: str) -> int:  # live, then busy, then down (marked lately)
            return 2 if addr in down else int(addr in busy)

        return sorted(order, key=rank)  # stable: the rotation holds within each rank

    def mark_down(self, addr: str, spent: float = 0.0) -> None:
        """``addr`` failed, and finding that out took ``spent`` seconds: tried last for
        COST_FACTOR times that or DOWN_FOR, and for twice as long as the last time if it
        failed when tried again (up to DOWN_MAX), unless DOWN_MAX had passed since then (a
        client's next call an hour later). Marked again while still down (each of a map's jobs
        it did not create), it is one failure: its time is only made up to this one's."""
        now = time.monotonic()
        until, last = self._down_until.get(addr, 0.0), self._down_for.get(addr, 0.0)
        span = max(DOWN_FOR, COST_FACTOR * spent)
        if until <= now < until + DOWN_MAX:  # failed again soon after its time was up
            span = max(span, 2 * last)
        span = min(span, DOWN_MAX)
        self._down_for[addr] = max(span, last) if until > now else span
        self._down_until[addr] = max(until, now + span)

    def mark_up(self, addr: str) -> None:
        """A connection to ``addr`` worked: its next failure starts over from DOWN_FOR."""
        self._down_until.pop(addr, None)
        self._down_for.pop(addr, None)
