"""How farm's admin commands name a worker connection's other end (``peer_name``), and the
jobs of the worker connections that closed lately, by that name (``EndedPeers``).

A command worker (PHP, Perl) that stops itself after N jobs closes its connection as it
exits: by the time its supervisor reaps it, ``peers`` may list the connection no more, and
the supervisor could not tell a worker that served its jobs and left (a recycle) from one
that could not work at all (a crash). ``served`` (farm.server.adminpeers) counts both.

One that ends its jobs faster than its supervisor reads its sockets (``gearman -w -c 2``
with a backlog: 0.1 s) was never named, and ``served`` could not tell its connection from
any other. The ends of connections nobody named that ended jobs, holding none, are kept
unclaimed with the functions they registered, when they were opened and, on the Unix
socket, their user; its supervisor claims one registered to its pool's functions, opened and
ended while the process lived, of its user where a Unix socket tells it (``claim``): one
connection per process at most, so that quick workers of a pool, each claiming one, add up
to the jobs done, and one that did none still crashes when none is left to claim. A TCP
end's user cannot be told: another local user's worker there may still be claimed. Kept
at a connection's end, not a job's: nothing is added to the path of a job.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from time import monotonic
from typing import Protocol

__all__ = ["EndedPeers", "peer_name", "ENDED_KEPT_FOR", "ENDED_KEPT", "UNNAMED_KEPT"]

#: An ended connection's jobs are kept this long: the supervisor asks within its loop's
#: turn of reaping the worker. Short, so a pid used again later is not credited with them.
ENDED_KEPT_FOR = 30.0
#: At most this many names are kept (the oldest go first): a bound on what the server holds.
#: Only the ends of connections named by their supervisor's questions are kept (``watch``):
#: any local user's short TCP connections, each ending a job, pushed a pool worker's out
#: before it was asked about. As many names asked about are remembered, the latest asked.
ENDED_KEPT = 4096
#: At most this many unnamed ends are kept for ``claim`` (the oldest go first). Any local
#: user's TCP workers may push a pool's out: its quick worker then counts no jobs, as before.
UNNAMED_KEPT = 1024


@dataclass
class _Unnamed:
    """A connection nobody named that closed having ended ``jobs_done`` jobs, holding none:
    opened at ``opened``, closed at ``when``; ``uid``, its Unix-socket peer's (SO_PEERCRED),
    None on TCP, where no user can be told."""

    peer: str
    functions: frozenset[bytes]
    jobs_done: int
    when: float
    opened: float
    uid: int | None


class Peer(Protocol):
    fd: int
    ip: str
    peer_pid: int
    peer_port: int
    peer_uid: int | None
    abilities: dict[bytes, float]
    opened: float


def peer_name(conn: Peer) -> str:
    """How ``peers`` and ``drain`` name a connection's other end: ``pid:N`` on the Unix
    socket (SO_PEERCRED), ``tcp:IP:PORT`` (``tcp:[IPv6]:PORT``) on TCP, ``fd:N`` else."""
    if conn.peer_pid:
        return f"pid:{conn.peer_pid}"
    if conn.peer_port:
        ip = conn.ip.removeprefix("::ffff:")  # an IPv4 peer of a dual-stack listener
        return f"tcp:[{ip}]:{conn.peer_port}" if ":" in ip else f"tcp:{ip}:{conn.peer_port}"
    return f"fd:{conn.fd}"


class EndedPeers:
    """Jobs ended, and jobs held as they closed, by the worker connections their supervisor
    named that closed in the last ``ENDED_KEPT_FOR`` seconds, by peer name (a process's
    connections added up)."""

    def __init__(self) -> None:
        self._unnamed: deque[_Unnamed] = deque(maxlen=UNNAMED_KEPT)
        self._jobs: OrderedDict[str, tuple[int, int, float]] = OrderedDict()
        # The names (``pid:N``, ``tcp:IP:PORT``) the supervisor asked about, the latest last.
        # Names, not connections: a worker's connection that registered after the question
        # that named it, or one made again under its pid. (``tcp:PORT``, any address, names
        # open connections alone, as ``served`` reads it.)
        self._watched: OrderedDict[str, None] = OrderedDict()

    def watch(self, names: set[str]) -> None:
        """The supervisor named these (``peers``/``drain``/``killing``/``served``)."""
        for name in names:
            self._watched.pop(name, None)
            self._watched[name] = None
        while len(self._watched) > ENDED_KEPT:
            self._watched.popitem(last=False)

    def note(self, conn: Peer, jobs_done: int, held: int) -> None:
        """``conn`` closed having ended ``jobs_done`` jobs, holding ``held``. Only named ends
        the supervisor asked about are kept: an ``fd:N`` names the next connection given that
        descriptor."""
        if not (jobs_done or held) or not (conn.peer_pid or conn.peer_port):
            return
        name = peer_name(conn).lower()  # as ``served`` names it
        now = monotonic()
        if name not in self._watched:
            if jobs_done and not held and conn.abilities:  # a clean end a quick worker may claim
                functions = frozenset(conn.abilities)
                end = _Unnamed(name, functions, jobs_done, now, conn.opened, conn.peer_uid)
                self._unnamed.append(end)
            return
        self._expire(now)
        done, holding, _ = self._jobs.pop(name, (0, 0, now))
        self._jobs[name] = (done + jobs_done, holding + held, now)
        while len(self._jobs) > ENDED_KEPT:
            self._jobs.popitem(last=False)

    def jobs(self, name: str) -> tuple[int, int]:
        """Jobs ended, and jobs held as they closed, by the connections named ``name`` that
        closed lately."""
        self._expire(monotonic())
        done, held, _ = self._jobs.get(name, (0, 0, 0.0))
        return done, held

    def claim(self, within: float, uids: set[int], functions: set[bytes]) -> int:
        """The jobs of one unclaimed end, now claimed: the oldest that registered one of
        ``functions`` and was opened (so ended too) in the last ``within`` seconds, the
        claiming process's lifetime: a connection older than the process is not its own.
        A Unix-socket end's user is one of ``uids`` (another user's never is); a TCP end's
        cannot be told. 0 when none is left."""
        now = monotonic()
        self._expire(now)
        for end in self._unnamed:
            if end.uid is not None and end.uid not in uids:
                continue
            if now - end.opened <= within and end.functions & functions:
                self._unnamed.remove(end)
                return end.jobs_done
        return 0

    def _expire(self, now: float) -> None:
        while self._unnamed and now - self._unnamed[0].when > ENDED_KEPT_FOR:
            self._unnamed.popleft()
        while self._jobs:
            name, (_, _, when) = next(iter(self._jobs.items()))
            if now - when <= ENDED_KEPT_FOR:
                break
            del self._jobs[name]
