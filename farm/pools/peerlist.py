"""The local server's farm-only admin ``peers`` listing, read for command workers: its rows
(``parse_peers``), the lines that ask for named connections alone (``peers_queries``), the
names a worker process's connections have there (``process_peers``: ``pid:N`` on the Unix
socket, ``tcp:IP:PORT`` on TCP), what each registered (``registrations``), and whether a
process's registration is final (``Registered``).
``farm.pools.commandjobs`` matches them to decide what a command worker is doing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import psutil

from farm.pools.proctree import processes
from farm.protocol.admin import named_lines

__all__ = [
    "REGISTRATION_SETTLE",
    "PeerRow",
    "Registered",
    "parse_peers",
    "process_peers",
    "peers_queries",
    "registrations",
]


class PeerRow(NamedTuple):
    """One line of the admin ``peers`` listing."""

    peer: str  # pid:N, tcp:IP:PORT or fd:N
    fd: str  # the server's, as the ``workers`` listing names the connection
    jobs: int
    draining: bool
    handle: str  # "" when idle
    function: str
    seconds: float | None  # how long the job in hand has run; None when idle
    client_id: str
    awaits_jobs: bool = False  # it asked for a job since it last registered a new function
    functions: tuple[str, ...] = ()  # what the connection registered


def parse_peers(reply: str) -> list[PeerRow]:
    """The ``peers`` listing; ValueError when the reply is not one (gearmand, an ERR)."""
    if not reply.endswith(".\n") or reply.startswith("ERR"):
        raise ValueError(f"not a peers listing: {reply[:80]!r}")
    rows = []
    for line in reply[:-2].split("\n")[:-1]:  # not splitlines(): see protocol/admin.py
        peer, fd, jobs, draining, handle, function, seconds, client_id, awaits, *functions = (
            line.split("\t")
        )
        idle = handle == "-"
        rows.append(
            PeerRow(
                peer,
                fd,
                int(jobs),
                draining == "1",
                "" if idle else handle,
                "" if idle else function,
                None if idle else float(seconds),
                client_id,
                awaits == "1",
                tuple(functions),
            )
        )
    return rows


def registrations(peers: list[PeerRow]) -> dict[str, frozenset[str]]:
    """Each peer name of ``peers`` -> the functions its connections registered."""
    found: dict[str, set[str]] = {}
    for row in peers:
        found.setdefault(row.peer, set()).update(row.functions)
    return {peer: frozenset(functions) for peer, functions in found.items()}


#: Seconds a worker's registration must stay the same once it asked for jobs with it
#: before it is taken as final: GearmaNode's Worker.addFunction sends PRE_SLEEP after each
#: CAN_DO, so a look between two of its names saw the first one asked for, and a reload
#: failed a worker that registered its pool's name just after. Longer than the seconds of
#: work a worker's start may do between two names (a connection, a model loaded): a reload
#: that names a wrong registration late is slower; one that fails a worker serving right
#: is wrong.
REGISTRATION_SETTLE = 5.0


class Registered:
    """What the connections of a ``peers`` listing registered, by peer name, and whether
    each of them that registered a function has asked for a job since its last new one.
    Until then it may be a look between two CAN_DOs (a worker's slow init between them),
    and a worker said to register other names than its pool's served; asked for, it is
    final once no new name came for REGISTRATION_SETTLE (``of``)."""

    def __init__(self, peers: list[PeerRow]) -> None:
        self.names = registrations(peers)
        self.unsettled = {row.peer for row in peers if row.functions and not row.awaits_jobs}

    def of(
        self, peers: Iterable[str], last: tuple[frozenset[str], float], now: float
    ) -> tuple[tuple[frozenset[str], float], bool]:
        """What the connections of ``peers`` (one process's names) registered, with since
        when (``now`` where it differs from ``last``, the look before: names and since
        when), and whether that is final: they asked for jobs with it, and it held
        REGISTRATION_SETTLE (where none registered anything, nothing is waited for)."""
        peers = set(peers)
        names = frozenset[str]().union(*(self.names.get(peer, ()) for peer in peers))
        since = last[1] if names == last[0] else now
        asked = not self.unsettled.intersection(peers)
        return (names, since), asked and (not names or now - since >= REGISTRATION_SETTLE)


def peers_queries(names: list[str]) -> list[str]:
    """``peers NAME...`` lines that together name ``names``: the server lists the
    connections named alone (not a local user's TCP workers with all they registered,
    farm.server.adminpeers.peers)."""
    return named_lines("peers", names)


def _tcp_name(ip: str, port: int) -> str:
    return f"tcp:[{ip}]:{port}" if ":" in ip else f"tcp:{ip}:{port}"


def process_peers(pid: int, ports: set[int]) -> frozenset[str] | None:
    """The names the server's ``peers`` gives the connections of process ``pid`` and its
    descendants (a shell wrapper, ``gearman -w``'s child): ``pid:N`` for each process, and
    ``tcp:IP:PORT`` for each TCP connection to one of ``ports``. None when it is gone."""
    try:
        procs = processes(pid)
    except psutil.Error:
        return None
    names = set()
    for proc in procs:
        names.add(f"pid:{proc.pid}")
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.raddr and conn.raddr.port in ports and conn.laddr:
                ip = conn.laddr.ip.removeprefix("::ffff:")
                names.add(_tcp_name(ip, conn.laddr.port))
    return frozenset(names)
