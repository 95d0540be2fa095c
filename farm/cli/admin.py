"""Command ``farm admin``: one admin text line to the job server, its reply as given.

The commands that change the queues (``cancel job``, ``drop function``, ``maxqueue``,
``create function``) are refused over TCP under `farm up` (``tcp_admin = "read-only"``), and
farm's own worker commands (``peers``, ``drain``) on TCP always: they are accepted on the
Unix socket, which ``gearadmin`` cannot reach (its ``-h`` is a host name). This is the tool
the server's refusal and the docs send an operator to.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from farm.cli.app import ConfigOption, FarmCommand, app, fail, typed
from farm.cli.server import ServerOption, admin_tls, server_address, unreachable

# Words of a reply to tell an operator where the refusal came from: the server's reply
# alone ("accepted only on the Unix socket") did not say that it was asked over TCP.
_DENIED = "PERMISSION_DENIED"


@app.command(cls=FarmCommand, name="admin")
def admin(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="COMMAND",
            help="The admin line, as one argument or as words (joined with spaces):"
            " 'cancel job H:host:1', 'drop function F', 'maxqueue F 100', 'status'."
            " Put -- before a word that starts with '-'.",
        ),
    ] = None,
    server: str = ServerOption,
    config: Path | None = ConfigOption,
) -> None:
    """Send one admin command to the farm's job server (its Unix socket) and print the reply.

    A listing is printed up to its '.' line, an OK line as it comes; exit 0. An ERR reply
    is one line on stderr, its '+'-escaped text decoded; exit 1. This reaches the commands
    refused over TCP (cancel job, drop function, maxqueue, create function, peers, drain).
    """
    from farm.client.admin import ReplyTooLarge, admin_query, reply_size

    line = _admin_line(command or [])
    word = line.split()[0]
    address = server_address(server, config)
    try:
        # surrogateescape: a function's name that is not UTF-8 is printed as its bytes
        reply = admin_query(address, line, tls=admin_tls(), errors="surrogateescape")
    except ReplyTooLarge as exc:
        fail(
            f"cannot read the answer to {word!r} from {address}: it ran past"
            f" {reply_size(exc.limit)}, the most `farm admin` reads; gave up and closed the"
            " connection (for the jobs: farm jobs --max-reply BYTES)"
        )
    except (OSError, ValueError) as exc:
        unreachable(f"the answer to {word!r}", address, exc, server, config)
    if reply.startswith("ERR"):
        over_tcp = not address.startswith("unix:")  # server_address's normal form
        fail(_error_text(reply, address if over_tcp else None), 1)
    # OK lines end with \r\n (gearmand's, most of them): the \r is the wire's, not the
    # answer's, and a script comparing the output with "OK" should not need to strip it.
    if reply.startswith("OK"):
        reply = reply.removesuffix("\n").removesuffix("\r") + "\n"
    sys.stdout.buffer.write(reply.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()


def _admin_line(words: list[str]) -> str:
    """The one line sent: the words joined by a space; a usage error (exit 2) where there
    is none, where one would end the line early (the server reads up to a newline, and
    a C string, gearmand's, to a NUL: the rest would be sent as a second command), or
    where it is longer than the server reads (MAX_ADMIN_LINE with its newline)."""
    from farm.protocol import MAX_ADMIN_LINE  # loaded by the command, not by `farm --help`

    line = " ".join(words)
    if not line.strip():  # blanks alone (a tab, too): no command to name
        fail("give the admin command to send, e.g. farm admin status", 2)
    for char, name in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL")):
        if char in line:
            fail(f"the admin command {typed(line)} holds {name}; give one command, on one line", 2)
    try:
        size = len(line.encode())
    except UnicodeEncodeError:
        fail(f"the admin command {typed(line)} is not UTF-8 text; give it in UTF-8", 2)
    # The server closes a longer line (its "\n" included) unanswered, as gearmand does:
    # the closed connection read as a TLS or network failure, which it is not.
    if size > MAX_ADMIN_LINE - 1:
        fail(
            f"the admin command is {size} bytes, longer than the server reads"
            f" ({MAX_ADMIN_LINE - 1} bytes a line); give a shorter one",
            2,
        )
    return line


def _error_text(reply: str, tcp_address: str | None) -> str:
    """An ``ERR CODE text`` reply for a human: gearmand writes the text with '+' for each
    space (``ERR PERMISSION_DENIED this+command+is...``), decoded here; farm's own texts
    that have spaces already are left as they are. ``tcp_address``: where the command was
    sent over TCP, which a refusal then names, with the way to the Unix socket."""
    first = reply.split("\n", 1)[0].removesuffix("\r")
    _err, _, rest = first.partition(" ")
    code, _, text = rest.partition(" ")
    if " " not in text:
        text = text.replace("+", " ")
    said = " ".join(part for part in ("ERR", code, text) if part)
    if code == _DENIED and tcp_address is not None:
        said += (
            f"; asked over TCP, at {tcp_address}: --server unix:PATH, or the farm's --config,"
            " reaches its Unix socket"
        )
    return said


#: How long `farm backup` waits for the copy: the server writes it before it answers.
BACKUP_TIMEOUT = 600.0


@app.command(cls=FarmCommand, name="backup")
def backup(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="Where the copy goes: a new file, written by the job server's user, in a"
            " directory it may write (under the shipped unit: /var/lib/farm).",
        ),
    ],
    server: str = ServerOption,
    config: Path | None = ConfigOption,
) -> None:
    """Copy the job store of the running farm to FILE: its queued background jobs, in one
    file that a server opens as its store (restore: docs/operations.md).

    The job server writes the copy itself (it holds its store locked while it runs, so
    `sqlite3 .backup` cannot), on its Unix socket, asked by its own user or root; it
    serves on while it writes. Exit 0 once FILE is written and checked; 1, with
    the server's word, when it is not (nothing is left at FILE then).
    """
    from farm.client.admin import admin_query
    from farm.paths import working_directory

    # The server's working directory is not ours: an absolute path (one line and exit 2,
    # not abspath's traceback, in a working directory removed).
    path = os.path.normpath(os.path.join(working_directory(), file))
    odd = any(c in path for c in "\r\n\0") or "  " in path or path != path.strip(" ")
    if odd or _not_utf8(path):
        fail(f"FILE {typed(path)}: an admin line cannot carry that path; choose another", 2)
    if os.path.isdir(path):  # '' and '.' too: the working directory (the server's ERR, exit 1)
        fail(f"FILE {typed(path)} is a directory; name a new file in it ({path}/queue.db)", 2)
    address = server_address(server, config)
    try:
        reply = admin_query(address, f"backup {path}", tls=admin_tls(), timeout=BACKUP_TIMEOUT)
    except (OSError, ValueError) as exc:
        unreachable("the backup's answer", address, exc, server, config)
    words = reply.split()
    if reply.startswith("ERR"):
        over_tcp = not address.startswith("unix:")
        fail(f"{path}: {_error_text(reply, address if over_tcp else None)}{_fix(reply, path)}", 1)
    if len(words) != 3 or words[0] != "OK" or not (words[1] + words[2]).isdigit():
        fail(f"{path}: {address} answered {typed(reply[:80])}: is it farm's job server?", 1)
    typer.echo(f"{path}: {int(words[1]):,} jobs, {int(words[2]):,} bytes")
    if not os.path.lexists(path):  # written where the server sees the path, not here
        typer.echo(
            f"farm: {path} is not there as this command sees the file system: the server wrote"
            " it in its own view of it (a unit's PrivateTmp= /tmp is its own, and removed at"
            " its stop); give a path in /var/lib/farm",
            err=True,
        )


def _fix(reply: str, path: str) -> str:
    """What to do about a refused backup, where the reply's code says it."""
    code = reply.split(maxsplit=2)[1:2]
    if code == ["UNKNOWN_COMMAND"]:
        return ": that job server has no backup command (gearmand's has none); ask farm's"
    if "File+exists" in reply or "File exists" in reply:
        if os.path.isdir(path):
            return f": it is a directory; name a new file in it ({os.path.join(path, 'queue.db')})"
        return ": a backup never writes over a file; remove it or name a new one"
    return ""


def _not_utf8(path: str) -> bool:
    try:
        path.encode()
    except UnicodeEncodeError:  # bytes the locale could not decode: os.fsdecode's surrogates
        return True
    return False
