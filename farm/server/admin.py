"""The admin text protocol, with gearmand 1.1.20's exact output formats.

Lists end with a line ``.``; ``OK``/``ERR`` replies end with ``\\r\\n`` except
``getpid``, ``version`` and ``verbose``, which gearmand ends with ``\\n``.
Commands are case-insensitive, as in gearmand. Listings show the newest
function or connection first, as gearmand's lists do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from time import monotonic

from farm.protocol.codec import name_problem
from farm.protocol.kinds import Priority
from farm.server.hub import Hub, Writer
from farm.version import __version__

OK = "OK\r\n"


def _incomplete(command: str) -> str:
    text = "An+incomplete+set+of+arguments+was+sent+to+this+command+"
    return f"ERR INVALID_ARGUMENTS {text}{command}\r\n"


def _bad_name(name: bytes) -> str | None:
    """Why an admin command may not make a function of ``name`` (the binary protocol's
    rule, farm.protocol.codec.name_problem, in the admin protocol's words), or None."""
    if (problem := name_problem(name)) is None:
        return None
    code, why = problem
    code = code if code == "ARGUMENT_TOO_LARGE" else "INVALID_ARGUMENTS"  # gearmand's admin code
    return f"ERR {code} function+name+{why.replace(' ', '+')}\r\n"


def _unknown(command: str) -> str:
    return f"ERR UNKNOWN_COMMAND Unknown+server+command{command}\r\n"


def _text(raw: bytes) -> str:
    # Names are bytes on the wire: a name that is not UTF-8 goes back out as it came (the
    # connection encodes replies with surrogateescape), as gearmand prints it.
    return raw.decode("utf-8", "surrogateescape")


#: Bytes a unique key may hold that would break a listing's lines (and a tab its fields).
_BREAKS_LINES = re.compile("[\x00-\x1f\x7f]")


def _line(raw: bytes) -> str:
    """A unique key as one line of a listing: gearmand prints it as it came, so a key
    holding a newline, or a key that is ``.``, ended the listing early and the rest was
    read as the reply to the next command. Control characters are written ``\\xNN`` (and
    ``.`` as ``\\x2e``); every other key is printed as gearmand prints it."""
    text = _text(raw)
    if text == ".":
        return "\\x2e"
    return _BREAKS_LINES.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def _raw(word: str) -> bytes:
    """An admin line's word as the bytes it was (farm.protocol.codec: surrogateescape)."""
    return word.encode("utf-8", "surrogateescape")


def status(server: Hub, args: list[str]) -> str:
    lines = [
        f"{_text(fq.name)}\t{fq.queued + fq.running}\t{fq.running}\t{len(fq.workers)}\n"
        for fq in reversed(server.jobs.functions.values())
    ]
    return "".join(lines) + ".\n"


def priority_status(server: Hub, args: list[str]) -> str:
    lines = [
        f"{_text(fq.name)}\t{fq.counts[0] + fq.scheduled[0]}\t{fq.counts[1] + fq.scheduled[1]}"
        f"\t{fq.counts[2] + fq.scheduled[2]}\t{len(fq.workers)}\n"
        for fq in reversed(server.jobs.functions.values())
    ]
    return "".join(lines) + ".\n"


def workers(server: Hub, args: list[str]) -> str:
    lines = []
    for conn in sorted(server.connections, key=lambda c: -c.fd):
        functions = "".join(" " + _text(f) for f in reversed(conn.abilities))
        lines.append(f"{conn.fd} {conn.ip} {_text(conn.client_id)} :{functions}\n")
    return "".join(lines) + ".\n"


def show(server: Hub, args: list[str]) -> str:
    what = " ".join(a.lower() for a in args)
    if what == "jobs":
        lines = [
            f"{_text(job.handle)}\t{job.retries}\t0\t{int(job.background or bool(job.store_id))}\n"
            for job in server.jobs.jobs.values()
        ]
        return "".join(lines) + ".\n"
    if what == "unique jobs":
        return "".join(f"{_line(job.unique)}\n" for job in server.jobs.jobs.values()) + ".\n"
    if what == "poison jobs":
        # farm's own: jobs failed after job_retries worker deaths (handle, function, unique).
        lines = [
            f"{_text(h)}\t{_text(f)}\t{_line(u)}\n" for h, f, u in reversed(server.jobs.poison)
        ]
        return "".join(lines) + ".\n"
    if not what:
        return _unknown("show")
    return "ERR UNKNOWN_SHOW_ARGUMENTS\r\n"


def jobs(server: Hub, args: list[str]) -> str:
    """farm's own: every live job, per function and oldest first, one line each:
    function, handle, state (running, queued, scheduled), priority, age in seconds (since it
    was queued, or since a worker took it). ``show jobs`` keeps gearmand's four fields."""
    now = monotonic()
    lines = []
    for job in sorted(server.jobs.jobs.values(), key=lambda j: (j.function, j.seq)):
        if job.worker is not None:
            state = "running"
        elif job.queued:
            state = "queued"
        else:
            state = "scheduled"  # SUBMIT_JOB_EPOCH, not due yet
        age = now - job.since if job.since else 0.0
        lines.append(
            f"{_text(job.function)}\t{_text(job.handle)}\t{state}"
            f"\t{Priority(job.priority).label}\t{age:.1f}\n"
        )
    return "".join(lines) + ".\n"


def peer_name(conn: Writer) -> str:
    """How ``peers`` and ``drain`` name a connection's other end: ``pid:N`` on the Unix
    socket (SO_PEERCRED), ``tcp:IP:PORT`` (``tcp:[IPv6]:PORT``) on TCP, ``fd:N`` else."""
    if conn.peer_pid:
        return f"pid:{conn.peer_pid}"
    if conn.peer_port:
        ip = conn.ip.removeprefix("::ffff:")  # an IPv4 peer of a dual-stack listener
        return f"tcp:[{ip}]:{conn.peer_port}" if ":" in ip else f"tcp:{ip}:{conn.peer_port}"
    return f"fd:{conn.fd}"


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
    its client id, then the functions it registered, a field each (a name holds no tab).
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
            f"{_text(job.handle)}\t{_text(job.function)}\t{now - job.since:.3f}"
            if job is not None
            else "-\t-\t-"
        )
        client_id = " ".join(_text(conn.client_id).split()) or "-"
        functions = "".join("\t" + _text(f) for f in reversed(conn.abilities))
        lines.append(
            f"{peer_name(conn)}\t{conn.fd}\t{conn.jobs_done}\t{int(conn.draining)}"
            f"\t{held}\t{client_id}{functions}\n"
        )
    return "".join(lines) + ".\n"


def _named_workers(server: Hub, args: list[str], command: str) -> list[Writer] | str:
    """The worker connections PEER... names (``pid:N``, ``tcp:IP:PORT``, ``tcp:PORT`` for
    any IP, ``fd:N``, as ``peers`` lists them), or the error reply."""
    if not args:
        return _incomplete(command)
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
    return [
        conn
        for conn in _worker_connections(server)
        if conn.peer_port in ports or peer_name(conn).lower() in wanted
    ]


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


def cancel(server: Hub, args: list[str]) -> str:
    if len(args) < 2:  # the words as gearmand reads them (_gearmand_args)
        return _unknown("cancel")
    if len(args) > 2 or args[0].lower() != "job":
        # gearmand's answer: a handle holds no space, so `cancel job H x` names no job, and
        # cancelling H, the first word, was not what was asked
        return "ERR UNKNOWN_ERROR\r\n"
    return OK if server.jobs.cancel(_raw(args[1])) else "ERR UNKNOWN_JOB\r\n"


def _gearmand_args(line: str) -> list[str]:
    """The words after the command's, as gearmand splits them: at runs of spaces only (a
    tab is part of a word), and a line that ends in a space has one more, empty, word. For
    ``cancel``, where the count of words decides: `cancel job ` names the empty handle
    (``ERR UNKNOWN_JOB``), and `cancel job H ` has a word too many, so H is not cancelled."""
    rest = re.sub(r"\A\s*\S*", "", line, count=1)  # the command's word, blanks before it
    return re.split(" +", rest.lstrip()) if rest else []


def _atoi(word: str) -> int:
    """A size as gearmand's atoi reads it: its leading digits (`2x` is 2), 0 when none. At
    most 18 of them, past which either server has no limit (int() raised past 4300)."""
    digits = re.match(r"[+-]?[0-9]{1,18}", word)
    return int(digits[0]) if digits else 0


def max_queue(server: Hub, args: list[str]) -> str:
    if not args:
        return _incomplete("maxqueue")
    sizes = [max(0, _atoi(a)) for a in args[1:4]]  # below 0: no limit, as 0 (gearmand)
    name = _raw(args[0])
    if (bad := _bad_name(name)) and name not in server.jobs.functions:
        return bad
    fq = server.jobs.function(name)
    if len(sizes) >= 2:
        # gearmand: `F HIGH NORMAL [LOW]`, a size not given is no limit; only `F N` is one
        # size for every priority
        high, normal, low = (*sizes, 0)[:3]
        fq.max_total, fq.max_by_priority = 0, (high, normal, low)
    else:
        fq.max_total, fq.max_by_priority = (sizes[0] if sizes else 0), (0, 0, 0)
    return OK


def create_function(server: Hub, args: list[str]) -> str:
    if len(args) != 2 or args[0].lower() != "function":
        return _incomplete("create")  # as gearmand: `create function a b` is not about `a`
    name = _raw(args[1])
    if (bad := _bad_name(name)) and name not in server.jobs.functions:
        return bad
    server.jobs.function(name)
    return OK


def drop_function(server: Hub, args: list[str]) -> str:
    if len(args) != 2 or args[0].lower() != "function":
        return _incomplete("drop")  # as gearmand: `drop function a b` is not about `a`
    name = _raw(args[1])
    if name not in server.jobs.functions:
        return "ERR function not found\r\n"
    if not server.jobs.drop_function(name):
        return "ERR there are still connected workers or executing clients\r\n"
    return OK


def getpid(server: Hub, args: list[str]) -> str:
    return f"OK {os.getpid()}\n"


def version(server: Hub, args: list[str]) -> str:
    return f"OK {__version__}\n"


def verbose(server: Hub, args: list[str]) -> str:
    return f"OK {server.verbose_name}\n"


def metrics(server: Hub, args: list[str]) -> str:
    """farm's own: the server's metrics in Prometheus' text format, then ``.`` (the supervisor
    serves them on its /metrics endpoint; docs/monitoring.md)."""
    from farm.server.exposition import exposition

    return exposition(server).decode() + ".\n"


COMMANDS: dict[str, Callable[[Hub, list[str]], str]] = {
    "status": status,
    "prioritystatus": priority_status,
    "workers": workers,
    "show": show,
    "jobs": jobs,
    "cancel": cancel,
    "maxqueue": max_queue,
    "create": create_function,
    "drop": drop_function,
    "getpid": getpid,
    "version": version,
    "verbose": verbose,
    "metrics": metrics,
    "peers": peers,
    "drain": drain,
    "killing": killing,
}


#: Commands that change the server's state, and when. ``maxqueue F`` with no size lifts
#: F's limit (and makes F if it is not there): it changes state as ``maxqueue F N`` does.
CHANGES_STATE: dict[str, Callable[[list[str]], bool]] = {
    "cancel": lambda args: True,
    "create": lambda args: True,
    "drop": lambda args: True,
    "maxqueue": lambda args: len(args) > 0,
}
DENIED = "ERR PERMISSION_DENIED this+command+is+accepted+only+on+the+Unix+socket\r\n"
#: Commands that make the function they name when it is not there: the name, or None.
MAKES_FUNCTION: dict[str, Callable[[list[str]], str | None]] = {
    "create": lambda args: args[1] if len(args) == 2 and args[0].lower() == "function" else None,
    "maxqueue": lambda args: args[0] if args else None,
}
TOO_MANY = "ERR QUEUE_ERROR the+server+holds+--max-functions+functions\r\n"
#: farm's own commands about worker processes: refused on TCP whatever --tcp-admin says
#: (they name local processes and can starve a function of workers).
UNIX_ONLY = frozenset({"peers", "drain", "killing"})


def run_admin(server: Hub, line: str, *, over_tcp: bool = False) -> str:
    """The reply to one admin line (a blank line too: gearmand's unknown-command error).

    With ``--tcp-admin read-only``, a command that changes state is refused on TCP, where
    every local user can reach the server; read-only ones (status, workers, show jobs)
    answer everywhere, so ``gearadmin --status`` works as before.
    """
    words = line.split()
    if not words:
        return _unknown("")
    name = words[0].lower()
    command = COMMANDS.get(name)
    if command is None:
        return _unknown(words[0])
    changes = CHANGES_STATE.get(name)
    if over_tcp and name in UNIX_ONLY:
        return DENIED
    read_only = over_tcp and server.options.tcp_admin == "read-only"
    if read_only and changes is not None and changes(words[1:]):
        return DENIED
    makes = MAKES_FUNCTION.get(name)
    if over_tcp and makes is not None and (made := makes(words[1:])) is not None:
        # As for the binary protocol's TCP peers (Connection.function_ok): with --tcp-admin
        # full, any local user could otherwise make functions without bound.
        functions = server.jobs.functions
        if _raw(made) not in functions and len(functions) >= server.options.max_functions:
            return TOO_MANY
    # cancel counts its words as gearmand does; the others take `show jobs ` as `show jobs`
    args = _gearmand_args(line) if name == "cancel" else words[1:]
    return command(server, args)
