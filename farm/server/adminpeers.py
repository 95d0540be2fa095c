"""farm's own admin commands about worker connections: ``peers``, ``drain``, ``killing``,
``served`` and ``claim``, which the supervisor sends over the Unix socket (refused on TCP:
UNIX_ONLY)."""

from __future__ import annotations

import os
import re
from time import monotonic

from farm.server.admintext import as_raw, as_text, incomplete
from farm.server.endedpeers import peer_name
from farm.server.hub import Hub, Writer

#: farm's own commands about worker processes: refused on TCP whatever --tcp-admin says
#: (they name local processes and can starve a function of workers).
UNIX_ONLY = frozenset({"peers", "drain", "killing", "served", "claim"})


#: A pid, fd or port as ``drain`` takes it: str.isdigit() passed "²" and 5,000 digits, on
#: which int() raised, and the asker's connection was closed as an internal error.
_NUMBER = re.compile("[0-9]{1,10}")


def _worker_connections(server: Hub) -> list[Writer]:
    return [
        c
        for c in sorted(server.connections, key=lambda c: c.fd)
        if c.abilities or c.running or c.jobs_done or c.draining
    ]


def peers(server: Hub, args: list[str]) -> str:
    """farm's own (Unix socket only): each worker connection, one line: peer (see
    ``peer_name``), fd, jobs it ended, draining (0/1), the job in hand (handle, function,
    seconds since it took it; ``-`` for each when idle; the oldest when it holds several),
    its client id, 1 when it has asked for a job (a grab, PRE_SLEEP) since it last
    registered a new function (else 0: it may be between two CAN_DOs, and the supervisor
    waits before it says a command worker registered other names than its pool's), then
    the functions it registered, a field each (a name holds no tab).
    The supervisor fills `farm ps` for command workers from this, and tells one that serves
    by what it registered: from this one reply, as the ``workers`` listing names
    connections by fd alone, which a connection closed between the two may hand on.

    ``peers PEER...`` lists only the connections named, as ``drain`` names them: the
    supervisor asks about its command workers alone. The whole listing holds every TCP
    worker's registrations, 134 MB that any local user may make the server hold, and took
    longer to make than the supervisor waits (farm.pools.commandjobs)."""
    now = monotonic()
    lines = []
    named = _named_workers(server, args, "peers") if args else _worker_connections(server)
    if isinstance(named, str):
        return named
    for conn in named:
        job = min(conn.running.values(), key=lambda j: j.since, default=None)
        held = (
            f"{as_text(job.handle)}\t{as_text(job.function)}\t{now - job.since:.3f}"
            if job is not None
            else "-\t-\t-"
        )
        client_id = " ".join(as_text(conn.client_id).split()) or "-"
        functions = "".join("\t" + as_text(f) for f in reversed(conn.abilities))
        lines.append(
            f"{peer_name(conn)}\t{conn.fd}\t{conn.jobs_done}\t{int(conn.draining)}"
            f"\t{held}\t{client_id}\t{int(conn.awaits_jobs)}{functions}\n"
        )
    return "".join(lines) + ".\n"


def _named_workers(server: Hub, args: list[str], command: str) -> list[Writer] | str:
    """The worker connections PEER... names (``pid:N``, ``tcp:IP:PORT``, ``tcp:PORT`` for
    any IP, ``fd:N``, as ``peers`` lists them), or the error reply."""
    named = _names(args, command)
    if isinstance(named, str):
        return named
    wanted, ports = named
    server.ended.watch(wanted)  # its supervisor's: their ends are kept for ``served``
    return _matching(server, wanted, ports)


def _matching(server: Hub, wanted: set[str], ports: set[int]) -> list[Writer]:
    """The worker connections of the names ``wanted`` or the ``ports`` (any address)."""
    return [
        conn
        for conn in _worker_connections(server)
        if conn.peer_port in ports or peer_name(conn).lower() in wanted
    ]


def _names(args: list[str], command: str) -> tuple[set[str], set[int]] | str:
    """PEER... as (names, ports: ``tcp:PORT``), or the error reply."""
    if not args:
        return incomplete(command)
    wanted = set()
    ports = set()
    for arg in args:
        kind, _, value = arg.lower().partition(":")
        if kind == "tcp" and _NUMBER.fullmatch(value):
            ports.add(int(value))
        elif kind in ("pid", "fd") and _NUMBER.fullmatch(value):
            wanted.add(f"{kind}:{int(value)}")
        elif kind == "tcp" and _NUMBER.fullmatch(value.rpartition(":")[2]):
            wanted.add(arg.lower())
        else:
            return f"ERR INVALID_ARGUMENTS {command}+takes+pid:N,+tcp:IP:PORT,+tcp:PORT+or+fd:N\r\n"
    return wanted, ports


def drain(server: Hub, args: list[str]) -> str:
    """farm's own (Unix socket only): ``drain PEER...`` -- hand these worker connections
    no more jobs (grabs get NO_JOB, a PRE_SLEEP is never answered); their jobs in hand run
    to their end. ``OK N``: the worker connections now draining among those named (0 when
    none is connected: nothing to do)."""
    named = _named_workers(server, args, "drain")
    if isinstance(named, str):
        return named
    for conn in named:
        if not conn.draining:
            conn.drain()
    return f"OK {len(named)}\r\n"


def killing(server: Hub, args: list[str]) -> str:
    """farm's own (Unix socket only): ``killing PEER...`` -- their supervisor kills these
    workers now (past a drain's grace): drained, and a job one holds when it dies is failed
    as stopped, not listed as a poison job, once ``job_retries`` allows it no other run."""
    named = _named_workers(server, args, "killing")
    if isinstance(named, str):
        return named
    for conn in named:
        conn.killed = True
        if not conn.draining:
            conn.drain()
    return f"OK {len(named)}\r\n"


def served(server: Hub, args: list[str]) -> str:
    """farm's own (Unix socket only): ``served PEER...`` -- ``OK N H``: the jobs ended by
    the worker connections named, and the jobs they hold (or held as they closed), those
    still open and those closed in the last ENDED_KEPT_FOR seconds whose names a ``peers``,
    ``drain``, ``killing`` or ``served`` asked about (``tcp:PORT`` counts open ones alone). The
    supervisor asks as it reaps a command worker: one that stopped itself after its jobs
    closed its connections first, and ``peers`` no longer lists them; one that left holding
    a job did not stop itself cleanly."""
    named = _names(args, "served")
    if isinstance(named, str):
        return named
    wanted, ports = named
    server.ended.watch(wanted)
    live = _matching(server, wanted, ports)
    ended = [server.ended.jobs(name) for name in wanted]
    done = sum(c.jobs_done for c in live) + sum(d for d, _ in ended)
    held = sum(len(c.running) for c in live) + sum(h for _, h in ended)
    return f"OK {done} {held}\r\n"


#: ``claim``'s window: a process's lifetime, in seconds, as the supervisor gives it.
_SECONDS = re.compile("[0-9]{1,9}(?:[.][0-9]{1,6})?")


def claim(server: Hub, args: list[str]) -> str:
    """farm's own (Unix socket only): ``claim SECONDS UID FUNCTION...`` -- ``OK N``: the
    jobs of one worker connection opened (and closed) in the last SECONDS (at most
    ENDED_KEPT_FOR) having ended N >= 1 jobs and holding none, that no ``peers``, ``drain``,
    ``killing`` or ``served`` named, and that registered one of the FUNCTIONs; on the Unix
    socket, one of the user UID (the claimant's) or the server's own: another user's
    connection is never claimed. ``OK 0`` when there is none.
    Each such end is claimed once. The supervisor asks as it reaps a command worker that
    exited 0 before it ever saw its sockets (``gearman -w -c 2`` with a backlog ends in a few
    milliseconds): its jobs count, and its exit is a recycle."""
    if len(args) < 3:
        return incomplete("claim")
    if not _SECONDS.fullmatch(args[0]) or not _NUMBER.fullmatch(args[1]):
        return "ERR INVALID_ARGUMENTS claim+takes+SECONDS+UID+FUNCTION...\r\n"
    uids = {int(args[1]), os.geteuid()}
    wanted = {as_raw(f) for f in args[2:]}
    return f"OK {server.ended.claim(float(args[0]), uids, wanted)}\r\n"
