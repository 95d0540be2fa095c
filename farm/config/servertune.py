"""``[server]`` keys that tune the local job server: each one is a flag of ``farm server``.

Under ``farm up`` the supervisor starts the server, so an operator has no command line
to give it limits on: these keys are that command line. A key left out passes no flag,
and the server keeps its own default (``farm server --help`` lists them). The values are
checked by the server's own parser (``farm.server.options.refusal``), so each limit is
written once, there; a refusal is one line naming the file and the key, as every
config error. Also here: the paths the farm's processes will open (the store, the
executor's spill directory), looked at before the farm starts.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from typing import Any

from farm.errors import ConfigError
from farm.net import socket_path_problem
from farm.protocol.codec import DEFAULT_MAX_PACKET
from farm.server.options import refusal
from farm.server.storetables import HEADER_SIZE, header_lost, look, not_sqlite

__all__ = ["TUNING", "server_flags"]

#: key -> (the server's flag, what the value must be: "int", "number", "bool", "mode", or
#: the choices of a string).
TUNING: dict[str, tuple[str, str | tuple[str, ...]]] = {
    "store_sync": ("--store-sync", ("normal", "full")),
    "max_connections": ("--max-connections", "int"),
    "max_queue": ("--max-queue", "int"),
    "max_queued_bytes": ("--max-queued-bytes", "int"),
    "max_packet": ("--max-packet", "int"),
    "max_partial_bytes": ("--max-partial-bytes", "int"),
    "max_unread_bytes": ("--max-unread-bytes", "int"),
    "max_abilities": ("--max-abilities", "int"),
    "max_tcp_abilities": ("--max-tcp-abilities", "int"),
    "max_functions": ("--max-functions", "int"),
    "stall_timeout": ("--stall-timeout", "number"),
    "wake_deadline": ("--wake-deadline", "number"),
    "keepalive_idle": ("--keepalive-idle", "int"),
    "keepalive_interval": ("--keepalive-interval", "int"),
    "keepalive_count": ("--keepalive-count", "int"),
    "backlog": ("--backlog", "int"),
    "exceptions": ("--exceptions", "bool"),
    "unix_mode": ("--unix-mode", "mode"),
}

_WHAT = {
    "int": "a whole number",
    "number": "a number of seconds",
    "bool": "true or false",
    "mode": 'an octal mode as chmod writes it, in quotes, such as "660"',
}

Fail = Callable[[str, str], ConfigError]


def server_flags(raw: Mapping[str, Any], fail: Fail) -> tuple[str, ...]:
    """The flags the ``[server]`` table ``raw`` asks for, as ``--flag=value`` (or ``--flag``);
    ``fail(key, message)`` makes the error for a value the server would refuse."""
    argv: list[str] = []
    for key, (flag, kind) in TUNING.items():
        if key not in raw:
            continue
        value = raw[key]
        text = _text(value, kind)
        if text is None:
            what = _WHAT[kind] if isinstance(kind, str) else " or ".join(f'"{c}"' for c in kind)
            raise fail(f"server.{key}", f"must be {what}, got {value!r}")
        if kind == "bool":
            if value:
                argv.append(flag)
        else:
            argv.append(f"{flag}={text}")
    if raw.get("max_packet", 0) > DEFAULT_MAX_PACKET:
        raise fail(
            "server.max_packet",
            f"must be at most {DEFAULT_MAX_PACKET} (the largest packet farm's own workers and"
            " clients read); lower it",
        )
    problem = refusal(argv)
    if problem is not None:
        raise fail(*_in_keys(problem))
    return tuple(argv)


def _text(value: Any, kind: str | tuple[str, ...]) -> str | None:
    """``value`` as the flag's text, or None when it is not of the key's kind."""
    if kind == "bool":
        return str(value) if isinstance(value, bool) else None
    if isinstance(value, bool):  # a bool is an int to Python, never to a farm.toml
        return None
    if kind == "int":
        return str(value) if isinstance(value, int) else None
    if kind == "number":
        if not isinstance(value, int | float):
            return None
        try:
            return repr(float(value))
        except OverflowError:  # a TOML integer past float's range: an infinity, refused
            return "inf" if value > 0 else "-inf"
    if kind == "mode":  # a string: TOML's 660 is decimal, and 0o660 reads as the same int
        return value if isinstance(value, str) and value.isdigit() else None
    return value if value in kind else None


def _in_keys(message: str) -> tuple[str, str]:
    """The server's objection, in the config's words: the key of the first flag it names,
    and the message with every flag as its key."""
    named = {flag: key for key, (flag, _) in TUNING.items()}
    keys = [named[f] for f in _FLAG.findall(message) if f in named]
    message = _FLAG.sub(lambda m: named.get(m[0], m[0]), message).removeprefix("argument ")
    if keys and message.startswith(f"{keys[0]}: "):  # argparse's "argument --flag: why"
        message = message[len(keys[0]) + 2 :]
    return (f"server.{keys[0]}" if keys else "server"), message


_FLAG = re.compile(r"--[a-z][a-z-]*")


def store_problem(path: str) -> str | None:
    """What is wrong with a store path, found before the server starts (None: nothing seen).
    A directory, or a file that is not a SQLite database, would stop the server at every
    start; better one line naming the key, and no restarts (exit 2)."""
    if os.path.isdir(path):
        return f"{path} is a directory: name a file in it, e.g. {os.path.join(path, 'queue.db')}"
    where = _no_place(path)
    if where and not os.path.lexists(path):
        return f'{where}; name a file elsewhere, e.g. /var/lib/farm/queue.db (or "none")'
    try:
        # O_NONBLOCK: open() of a FIFO there waited for a writer, and `farm up` with it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # not there yet (the server creates it), or not ours to read: the server says
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f'{path} is not a regular file: name a file (or "none")'
        head = os.pread(fd, HEADER_SIZE, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not_sqlite(head):  # the server's rule: a part of the header is a store cut off (look)
        # A store whose header was damaged (farm's -reserve beside it): another file strands it.
        another = f'{path} is not a SQLite database: name another file (or "none")'
        return header_lost(path, head) or another
    # Another program's database, a newer farm's store, or a store cut off or damaged: the
    # server refuses it at every start (exit 2), which `farm check` said ok of; read here
    # without a change (no file made beside it, no mode changed).
    return look(path, damage=True) if head else None


def socket_problem(path: str, example: str) -> str | None:
    """What is wrong with a Unix socket's path (``[supervisor] control``, a ``unix:`` entry
    of ``[server] listen``; ``example`` is one for the fix), found before the farm starts
    (None: nothing seen); its bind failed later, exit 1, which systemd restarts."""
    too_long = socket_path_problem(path, example)
    if too_long:
        return too_long
    where = _no_place(path)
    return f"{where}; put the socket elsewhere, e.g. {example}" if where else None


#: Kernel filesystems: a file cannot be made in them, whatever the modes say (to root).
_KERNEL_FS = ("/proc", "/sys")


def _no_place(path: str) -> str | None:
    """Why no file can be made at ``path`` (its missing directories are made), or None."""
    if any(len(os.fsencode(name)) > 255 for name in path.split("/")):  # NAME_MAX: ENAMETOOLONG
        return f"{path} holds a name over 255 bytes, more than a file system takes"
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent):
        parent = os.path.dirname(parent) if parent != os.path.dirname(parent) else ""
    if not parent:
        return None
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    real = os.path.realpath(parent)
    if any(real == fs or real.startswith(fs + "/") for fs in _KERNEL_FS):
        return f"{parent} is a kernel filesystem, where no file can be made"
    return None


def spill_dir_problem(path: str) -> str | None:
    """What is wrong with ``[executor] spill_dir``, found before the farm starts rather
    than at the first large call (None: nothing seen; farm creates it when missing)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        return f"{path} is not a directory"
    where = _no_place(path)  # under a file, in /proc: farm up said nothing of it
    if where and not os.path.lexists(path):
        return f"{where}; name a directory elsewhere, e.g. /var/lib/farm/spill"
    if os.path.isdir(path) and os.stat(path).st_mode & 0o002:
        return (
            f"{path} is writable by every user, who could swap the files: name a directory"
            " of the farm's own (farm creates it, mode 2770)"
        )
    return None
