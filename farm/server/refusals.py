"""Why the job server cannot start, in the words of the fix: a listener's bind error, and
the hint for whoever started it (`farm server`'s flags, or the [server] keys of `farm up`'s
config), written as one line on stderr (or a JSON record with --log-format json)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import stat
import sys
from typing import Any

from farm.errors import FarmError
from farm.logs import error_line
from farm.loopback import another_users_listener
from farm.net import Address, parse_address
from farm.paths import NoStateDirectory
from farm.server.options import ServerOptions
from farm.server.settings import default_store_path

__all__ = [
    "BIND_REASONS",
    "HINTS",
    "ListenError",
    "fatal",
    "fix_hint",
    "listen_refused",
    "taken_by_another_user",
    "another_users_socket",
    "store_in_use_hint",
]

log = logging.getLogger("farm.server")

#: What a failed bind means, in the words of the fix (errno -> words).
BIND_REASONS = {
    errno.ENOENT: "no such directory",
    errno.EADDRINUSE: "address already in use",
    errno.EEXIST: "the path exists and is not a socket; not replacing it",
    errno.EACCES: "permission denied",
    errno.EADDRNOTAVAIL: "no such address on this host",
}


class ListenError(FarmError):
    """A listener could not be opened; the message names the address or path."""

    def __init__(self, where: str, exc: OSError, hint: str | None = None) -> None:
        self.errno = exc.errno
        self.where = where
        self.hint = hint  # what to change, where the usual hints (-p, -L) do not apply
        self.reason = BIND_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
        super().__init__(f"cannot listen on {where}: {self.reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled or copied, made again from these, not from its message (farm.errors)
        return type(self), (self.where, OSError(self.errno, self.reason), self.hint), self.__dict__


def listen_refused(options: ServerOptions, exc: ListenError) -> int:
    """Say a listener's refusal, with what to change; the exit status: 1 (a port or socket
    in use may be free at the next start), 2 for a file in the way (it stays)."""
    taken = "socket" if exc.where.startswith("unix:") else "port"  # what to move
    hint = exc.hint or fix_hint(options, taken if exc.errno == errno.EADDRINUSE else "listen")
    fatal(options, f"{exc} ({hint})")
    return 2 if exc.errno == errno.EEXIST else 1


def fatal(options: ServerOptions, message: str) -> None:
    """Why the server cannot start: one line on stderr, or a JSON record among the others
    with --log-format json (a raw line broke `journalctl -o cat | jq`)."""
    if options.log_format == "json":
        log.error("farm server: %s", message)
    else:
        print(error_line(f"farm server: {message}"), file=sys.stderr)


#: How to fix a start-up error, for whoever started the server: `farm server`'s flags, or
#: the [server] keys of `farm up`'s config (which has no such flags).
HINTS = {
    ("store", "flags"): "use --store PATH, or --store none for memory only",
    ("store", "config"): 'set [server] store = "PATH" in the config, or "none" for memory only',
    # A store file that was there and could not be opened (StoreUnopenable): its queued jobs
    # are in it, and another path or none, the hint above, left them behind at each restart.
    ("held", "flags"): "it may hold queued jobs: fix the permissions, attributes (lsattr;"
    " chattr -i) or owner of the file or its directory for this user; --store elsewhere or"
    " none leaves its queued jobs behind",
    ("held", "config"): "it may hold queued jobs: fix the permissions, attributes (lsattr;"
    " chattr -i) or owner of the file or its directory for this user; [server] store"
    ' elsewhere or "none" leaves its queued jobs behind',
    ("port", "flags"): "another server has it? use another -p PORT, or -L HOST:PORT",
    ("port", "config"): "another server has it? give [server] listen another port",
    # The same port taken on [::1] alone (a Node dev server binds localhost's [::1] only).
    ("twin", "flags"): "use another -p PORT, or -L HOST:PORT",
    ("twin", "config"): "give [server] listen another port",
    ("socket", "flags"): "another server has it? use another --unix PATH",
    ("socket", "config"): "another server has it? give [server] listen another unix: path",
    # A socket of another user's at the path (in /tmp, from a server of theirs killed):
    # this user may neither connect to it nor remove it.
    ("theirs", "flags"): "use another --unix PATH",
    ("theirs", "config"): "give [server] listen another unix: path",
    ("listen", "flags"): "check the -L and --unix addresses",
    ("listen", "config"): "check [server] listen in the config",
}


def fix_hint(options: ServerOptions, what: str) -> str:
    return HINTS[what, options.hints]


def taken_by_another_user(options: ServerOptions, tcp: Address, exc: OSError) -> str | None:
    """The hint for a port in use where another user listens on it, naming them: on a host
    where users each run a farm, the first one up holds the port, and "another server has
    it?" left the next to find whose, which ``ss -ltnp`` does not say to them."""
    if exc.errno != errno.EADDRINUSE:
        return None
    who = another_users_listener(tcp.host, tcp.port)
    if who is None:
        return None
    return f"{who}: another user's process listens there; {fix_hint(options, 'twin')}"


def another_users_socket(options: ServerOptions, path: str, exc: OSError) -> str | None:
    """The hint for a Unix socket path this user was refused where another user's socket
    is (one their server left when it was killed, or theirs live): "check the addresses"
    read as if this user's address were wrong, with nothing said of whose file is there."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid == os.geteuid():
        return None
    who = f"uid {info.st_uid}"
    with contextlib.suppress(KeyError):  # a uid the user database does not know
        who += f", {pwd.getpwuid(info.st_uid).pw_name}"
    return (
        f"another user's socket is there ({who}), live or left by a server of theirs, which"
        f" this user may not remove; {fix_hint(options, 'theirs')}"
    )


def store_in_use_hint(options: ServerOptions) -> str:
    """The store is the port's own when none was named (queue-PORT.db): a server of this
    user already on the port holds it, and another store would only meet the port taken."""
    port = parse_address(options.listen[0]).port if options.listen else None
    try:
        own = port is not None and options.store == default_store_path(options.listen, options.unix)
    except NoStateDirectory:  # no default store: this one was named
        own = False
    if not own:
        return fix_hint(options, "store")
    return f"the store of port {port}: {fix_hint(options, 'port')}"
