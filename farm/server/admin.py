"""The admin text protocol, with gearmand 1.1.20's exact output formats.

Lists end with a line ``.``; ``OK``/``ERR`` replies end with ``\\r\\n`` except
``getpid``, ``version`` and ``verbose``, which gearmand ends with ``\\n``.
Commands are case-insensitive, as in gearmand. Listings show the newest
function or connection first, as gearmand's lists do. farm's own commands about worker
connections (peers, drain, killing) are farm.server.adminpeers; the pieces of a reply
(error lines, names as listings print them) farm.server.admintext.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import Future
from time import monotonic

from farm.protocol.kinds import Priority
from farm.server.adminpeers import UNIX_ONLY, claim, drain, killing, peers, served
from farm.server.admintext import (
    OK,
    as_raw,
    as_text,
    ascii_lower,
    bad_name,
    incomplete,
    key_line,
    unknown,
)
from farm.server.hub import Hub
from farm.server.queues import SERVED_LOCALLY
from farm.server.storebackup import backup
from farm.version import __version__


def status(server: Hub, args: list[str]) -> str:
    lines = [
        f"{as_text(fq.name)}\t{fq.queued + fq.running}\t{fq.running}\t{len(fq.workers)}\n"
        for fq in reversed(server.jobs.functions.values())
    ]
    return "".join(lines) + ".\n"


def priority_status(server: Hub, args: list[str]) -> str:
    lines = [
        f"{as_text(fq.name)}\t{fq.counts[0] + fq.scheduled[0]}\t{fq.counts[1] + fq.scheduled[1]}"
        f"\t{fq.counts[2] + fq.scheduled[2]}\t{len(fq.workers)}\n"
        for fq in reversed(server.jobs.functions.values())
    ]
    return "".join(lines) + ".\n"


def workers(server: Hub, args: list[str]) -> str:
    lines = []
    for conn in sorted(server.connections, key=lambda c: -c.fd):
        functions = "".join(" " + as_text(f) for f in reversed(conn.abilities))
        lines.append(f"{conn.fd} {conn.ip} {as_text(conn.client_id)} :{functions}\n")
    return "".join(lines) + ".\n"


def show(server: Hub, args: list[str]) -> str:
    what = " ".join(ascii_lower(a) for a in args)
    if what == "jobs":
        lines = []
        for job in server.jobs.jobs.values():
            background = job.background or bool(job.store_id)
            # IGNORED: a foreground job no client waits for (gearmand's; farm drops a queued
            # one, so this is one running, whose result will be dropped)
            ignored = not background and not job.clients
            lines.append(
                f"{as_text(job.handle)}\t{job.retries}\t{int(ignored)}\t{int(background)}\n"
            )
        return "".join(lines) + ".\n"
    if what == "unique jobs":
        return "".join(f"{key_line(job.unique)}\n" for job in server.jobs.jobs.values()) + ".\n"
    if what == "poison jobs":
        # farm's own: jobs failed after job_retries worker deaths (handle, function, unique).
        lines = [
            f"{as_text(h)}\t{as_text(f)}\t{key_line(u)}\n"
            for h, f, u in reversed(server.jobs.poison)
        ]
        return "".join(lines) + ".\n"
    if not what:
        return unknown("show")
    return "ERR UNKNOWN_SHOW_ARGUMENTS\r\n"


def jobs(server: Hub, args: list[str]) -> str:
    """farm's own: every live job, per function and oldest first, one line each:
    function, handle, state (running, queued, scheduled), priority, age in seconds (since it
    became due, or since a worker took it; 0 when scheduled). ``show jobs`` keeps gearmand's
    four fields."""
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
            f"{as_text(job.function)}\t{as_text(job.handle)}\t{state}"
            f"\t{Priority(job.priority).label}\t{age:.1f}\n"
        )
    return "".join(lines) + ".\n"


def cancel(server: Hub, args: list[str]) -> str:
    if len(args) < 2:  # the words as gearmand reads them (_gearmand_args)
        return unknown("cancel")
    if len(args) > 2 or ascii_lower(args[0]) != "job":
        # gearmand's answer: a handle holds no space, so `cancel job H x` names no job, and
        # cancelling H, the first word, was not what was asked
        return "ERR UNKNOWN_ERROR\r\n"
    return OK if server.jobs.cancel(as_raw(args[1])) else "ERR UNKNOWN_JOB\r\n"


def _gearmand_args(line: str) -> list[str]:
    """The words after the command's, as gearmand splits them: at runs of spaces only (a
    tab is part of a word), and a line that ends in a space has one more, empty, word. For
    ``cancel``, where the count of words decides: `cancel job ` names the empty handle
    (``ERR UNKNOWN_JOB``), and `cancel job H ` has a word too many, so H is not cancelled."""
    rest = re.sub(r"\A *[^ ]*", "", line, count=1)  # the command's word, spaces before it
    return re.split(" +", rest.lstrip()) if rest else []


def _atoi(word: str) -> int:
    """A size as gearmand's atoi reads it: its leading digits (`2x` is 2), 0 when none. At
    most 18 of them (int() raised past 4300); a size past a C int's is farm's as written,
    where gearmand's int keeps its low 32 bits (4294967297 is 1 there), which no one
    would mean."""
    digits = re.match(r"[+-]?[0-9]{1,18}", word)
    return int(digits[0]) if digits else 0


def max_queue(server: Hub, args: list[str]) -> str:
    if not args:
        return incomplete("maxqueue")
    sizes = [max(0, _atoi(a)) for a in args[1:4]]  # below 0: no limit, as 0 (gearmand)
    name = as_raw(args[0])
    if (bad := bad_name(name)) and name not in server.jobs.functions:
        return bad
    fq = server.jobs.function(name)
    if len(sizes) >= 2:
        # gearmand: `F HIGH NORMAL [LOW]`, a size not given is no limit; only `F N` is one
        # size for every priority
        high, normal, low = (*sizes, 0)[:3]
        fq.max_total, fq.max_by_priority = 0, (high, normal, low)
    else:
        fq.max_total, fq.max_by_priority = (sizes[0] if sizes else 0), (0, 0, 0)
    if fq.served or fq.stats.counted():
        # A job or a worker has used it: with its limit lifted it may be idle, as any other
        # (a job's end found it kept for its limit, and nothing looked again: the name
        # counted against --max-functions for good). One the admin made that nobody used
        # yet is kept, as `create function`'s is (docs/server.md).
        server.jobs.note_unused(name)
    return OK


def create_function(server: Hub, args: list[str]) -> str:
    if len(args) != 2 or ascii_lower(args[0]) != "function":
        return incomplete("create")  # as gearmand: `create function a b` is not about `a`
    name = as_raw(args[1])
    if (bad := bad_name(name)) and name not in server.jobs.functions:
        return bad
    server.jobs.function(name)
    return OK


def drop_function(server: Hub, args: list[str]) -> str:
    if len(args) != 2 or ascii_lower(args[0]) != "function":
        return incomplete("drop")  # as gearmand: `drop function a b` is not about `a`
    name = as_raw(args[1])
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


def pool_functions(server: Hub, args: list[str]) -> str:
    """farm's own (the server's own user on the Unix socket alone: OWN_USER_ONLY): NAME... are
    functions of `farm up`'s pools, as ``--pool-function`` names them at the start, so the
    metrics label them by name before their workers register: a pool a reload added. Names
    are only added (a function keeps its label while its entry lives, as a served one does)."""
    if not args:
        return incomplete("poolfunctions")
    names = [as_raw(word) for word in args]
    for name in names:
        if bad := bad_name(name):
            return bad
    jobs = server.jobs
    jobs.pool_functions |= frozenset(names)  # entries made later (Jobs.function)
    for name in names:
        if (fq := jobs.functions.get(name)) is not None:  # one a client already made
            fq.served = SERVED_LOCALLY
    return OK


#: A command's reply: its text, or a future of it (``backup``, made in the store's thread).
Reply = str | Future[str]

COMMANDS: dict[str, Callable[[Hub, list[str]], Reply]] = {
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
    "served": served,
    "claim": claim,
    "poolfunctions": pool_functions,
    "backup": backup,
}


#: Commands that change the server's state, and when. ``maxqueue F`` with no size lifts
#: F's limit (and makes F if it is not there): it changes state as ``maxqueue F N`` does.
CHANGES_STATE: dict[str, Callable[[list[str]], bool]] = {
    "cancel": lambda args: True,
    "create": lambda args: True,
    "drop": lambda args: True,
    "maxqueue": lambda args: len(args) > 0,
}
#: The refusal names the tool that reaches the Unix socket (gearadmin cannot: its -h is a
#: host), '+' for each space as gearmand's error texts, so clients that read them split alike.
DENIED = "ERR PERMISSION_DENIED this+command+is+accepted+only+on+the+Unix+socket+(farm+admin)\r\n"
#: Commands the server takes from its own user alone, on the Unix socket (SO_PEERCRED): the
#: socket's group may reach it too, and ``poolfunctions`` names functions to label first,
#: which would let it crowd the farm's own pools out of the MAX_LABELLED labels into other;
#: ``claim``'s uid is its word; ``backup`` writes a file as the server's user.
OWN_USER_ONLY = frozenset({"poolfunctions", "claim", "backup"})
#: ... and of those, what root may ask too: a copy of the store, which root may read anyway.
ROOT_TOO = frozenset({"backup"})
NOT_OWN_USER = "ERR PERMISSION_DENIED this+command+is+accepted+only+from+the+server's+user\r\n"
#: Commands that make the function they name when it is not there: the name, or None.
MAKES_FUNCTION: dict[str, Callable[[list[str]], str | None]] = {
    "create": lambda args: (
        args[1] if len(args) == 2 and ascii_lower(args[0]) == "function" else None
    ),
    "maxqueue": lambda args: args[0] if args else None,
}
#: The errors that end with the command's word (admintext's unknown and incomplete).
_NAMES_COMMAND = ("ERR UNKNOWN_COMMAND ", "ERR INVALID_ARGUMENTS An+incomplete+")
TOO_MANY = "ERR QUEUE_ERROR the+server+holds+--max-functions+functions\r\n"


def run_admin(
    server: Hub, line: str, *, over_tcp: bool = False, peer_uid: int | None = None
) -> Reply:
    """The reply to one admin line (a blank line too: gearmand's unknown-command error);
    a future of it for a command whose work leaves the loop (Unix socket only).

    With ``--tcp-admin read-only``, a command that changes state is refused on TCP, where
    every local user can reach the server; read-only ones (status, workers, show jobs)
    answer everywhere, so ``gearadmin --status`` works as before.
    """
    line = line.partition("\0")[0]  # a C string to gearmand: a NUL ends it
    # gearmand splits at spaces only (a tab, \x0b or \x1c is part of a word) and matches
    # a command with strcasecmp: str.split() ran `MAXQUEUE\x0bfoo` as maxqueue, and
    # str.lower() a Kelvin sign's `\u212aILLING` as killing. (Leading spaces are farm's.)
    words = [word for word in line.split(" ") if word]
    if not words:
        return unknown("")
    name = ascii_lower(words[0])
    command = COMMANDS.get(name)
    if command is None:
        return unknown(words[0])
    changes = CHANGES_STATE.get(name)
    if over_tcp and (name in UNIX_ONLY or name in OWN_USER_ONLY):
        return DENIED
    # SO_PEERCRED gives the peer's effective uid (at its connect): compared with ours, the
    # one this process acts as, not its real uid.
    allowed = peer_uid == os.geteuid() or (name in ROOT_TOO and peer_uid == 0)
    if name in OWN_USER_ONLY and not allowed:
        return NOT_OWN_USER
    read_only = over_tcp and server.options.tcp_admin == "read-only"
    if read_only and changes is not None and changes(words[1:]):
        return DENIED
    makes = MAKES_FUNCTION.get(name)
    if over_tcp and makes is not None and (made := makes(words[1:])) is not None:
        # As for the binary protocol's TCP peers (Connection.function_ok): with --tcp-admin
        # full, any local user could otherwise make functions without bound.
        # Counted by the same rule: idle entries are freed to make room (room_for_new).
        jobs = server.jobs
        if as_raw(made) not in jobs.functions and not jobs.room_for_new(
            server.options.max_functions
        ):
            return TOO_MANY
    # cancel counts its words as gearmand does; the others take `show jobs ` as `show jobs`
    args = _gearmand_args(line) if name == "cancel" else words[1:]
    reply = command(server, args)
    if isinstance(reply, Future):
        return reply
    if reply.startswith(_NAMES_COMMAND) and reply.endswith(f"{name}\r\n"):
        # gearmand names the command as the line gave it (`MAXQUEUE`), not in lower case
        reply = f"{reply[: -len(name) - 2]}{words[0]}\r\n"
    return reply
