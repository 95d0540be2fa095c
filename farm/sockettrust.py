"""Whether a farm's Unix socket may be used: one another local user could have planted, to
receive the calls sent to it, is not (``unsafe``), and one this user cannot open is passed
over (``usable``). ``farm.discovery`` asks this of the local farm's socket and of the
``unix:`` entries of ``[supervisor] servers``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from farm.errors import ServerUnavailable
from farm.paths import UnsafeDirectory, check_private, fallback_runtime_dir

__all__ = [
    "answering",
    "no_socket_note",
    "not_a_socket",
    "never_answers",
    "passing_over_what_never_answers",
    "trusted",
    "unsafe",
    "usable",
]

log = logging.getLogger("farm")


def usable(unix: str) -> bool:
    """Whether a socket is at ``unix`` that this user may open. Looked at through symbolic
    links, as the connect goes (whose the link is, is ``unsafe``'s question): a file or a
    directory there was taken for a socket, and farm.Executor() waited on connects it
    refused, where the CLI refuses the address at once ("not a socket")."""
    path = unix[len("unix:") :]
    return not_a_socket(path) is False and os.access(path, os.R_OK | os.W_OK)


def not_a_socket(path: str) -> bool | None:
    """Whether something other than a socket is at ``path`` (links followed); None when
    nothing is there, or it cannot be looked at (the connect says why)."""
    try:
        return not stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return None


def never_answers(unix: str) -> str | None:
    """Why no job server can ever answer this user at ``unix``: something other than a
    socket is there (a file, a directory), or this user may not use it (permission denied,
    on the socket or a directory above it). None when a server may: a socket this user may
    open, or nothing there yet (its server may be starting: a connect waits for it)."""
    path = unix[len("unix:") :]
    try:
        info = os.stat(path)
    except PermissionError:
        return "this user may not use it (permission denied)"
    except OSError:
        return None  # not there (yet)
    if not stat.S_ISSOCK(info.st_mode):
        return "not a socket (a file or a directory)"
    if not os.access(path, os.R_OK | os.W_OK):
        return "this user may not use it (permission denied)"
    return None


def passing_over_what_never_answers(unix: list[str]) -> list[str]:
    """``unix`` less the entries where no job server can ever answer (``never_answers``),
    each with a warning: the Executor's connects to it were refused for as long as it ran.
    One not there (yet) stays: its server may be starting."""
    kept = []
    for sock in unix:
        if why := never_answers(sock):
            log.warning("not using %s: %s", sock, why)
        else:
            kept.append(sock)
    return kept


def no_socket_note(unix: list[str]) -> str:
    """For the line saying none of ``unix`` answers: why each that can never answer cannot
    (a file there, a socket this user may not use); "" when none is such."""
    notes = [f"{s[len('unix:') :]}: {why}" for s in unix if (why := never_answers(s))]
    if not notes:
        return ""
    fix = "give the job server's Unix socket (e.g. unix:/run/farm/gearman.sock)."
    return f"{'; '.join(notes)}; {fix}"


#: What ``unsafe`` says to do about the job server's socket.
SERVER_FIX = "configure the farm's socket in a directory of the farm's user"


def unsafe(unix: str, fix: str = SERVER_FIX, what: str = "your calls") -> str | None:
    """Why the farm's socket must not be used (None: it may). Another user may have made
    the shared-/tmp fallback directory first, with a socket of theirs in it, or put a
    socket of theirs at a configured path in a directory others may write (/tmp), to
    receive ``what`` (the job server's, or the control socket's: farm.pools.control)."""
    path = Path(unix[len("unix:") :])
    parent = path.parent
    if parent == fallback_runtime_dir() and os.path.lexists(parent):
        try:
            check_private(parent)
        except UnsafeDirectory as exc:
            return str(exc)
    try:
        sock = path.lstat()
    except OSError:
        return None  # nothing there (yet): nothing to connect to either
    if sock.st_uid in (os.getuid(), 0):
        return None  # ours, or root's: nobody else made it
    # Another user's (the farm's, under the shipped unit): trusted only if nobody but that
    # user and root could have put it there -- every directory up to / theirs or root's and
    # closed to others' writes, as OpenSSH checks a path (/tmp/x, made by anyone, is not).
    for above in (parent, *parent.parents):
        info = above.stat()
        if info.st_uid not in (sock.st_uid, 0) or info.st_mode & 0o022:
            return (
                f"{path} belongs to uid {sock.st_uid}, and {above} could have let another"
                " user put it there (it is writable by others, or owned by uid"
                f" {info.st_uid}) to receive {what}; {fix}"
            )
    return None


def trusted(unix: str, fallback: bool) -> bool:
    """Whether the socket ``unix`` may be used (``unsafe``): where it may not, False with a
    warning when the caller has another way in (a client, TCP), else UnsafeDirectory."""
    why = unsafe(unix)
    if why is None:
        return True
    if not fallback:
        raise UnsafeDirectory(why)
    log.warning("not using the farm's Unix socket: %s", why)
    return False


def answering(
    servers: list[str],
    where: str,
    fix: str = "farm.Executor() does not send calls over TCP",
    *,
    chosen: bool = False,
) -> list[str]:
    """``servers`` for the Executor, their ``unix:`` entries checked once, as it is made (the
    one rule for ``$FARM_SERVERS``, ``$GEARMAN_SERVERS``' and ``[supervisor] servers``'):
    one another user could have planted is refused (UnsafeDirectory), one where no server
    can ever answer (no socket, or one this user may not use) passed over with a warning,
    and where none is left that can answer the Executor is refused in one line naming
    ``where`` and ``fix``. A TCP entry stays, unlooked at, and so does one missing among
    others (its server may be starting; the others serve, as gearmand's clients fail over).
    Where all are missing, those ``chosen`` ($FARM_SERVERS, as ``servers=``) stay too: an
    Executor made as an app is imported, before `farm up`, was refused; its first call waits
    ``connect_timeout`` for the farm. Those found are refused, as the config's socket is."""
    unix = [s for s in servers if s.startswith("unix:")]
    for sock in unix:
        trusted(sock, False)
    if len(unix) == len(servers):
        may = [s for s in unix if not never_answers(s)]  # a socket, or none yet
        if not (may if chosen else any(usable(s) for s in may)):
            paths = ", ".join(s[len("unix:") :] for s in unix)
            why = no_socket_note(unix) or "is it running, and may this user use the socket?"
            raise ServerUnavailable(f"no job server answers on {paths} ({where}): {why} {fix}")
    kept = passing_over_what_never_answers(unix)
    return [s for s in servers if not s.startswith("unix:") or s in kept]
