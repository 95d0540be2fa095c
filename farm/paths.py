"""Where farm keeps state when nothing else is said: one rule for the store, the key, …,
and the checks that a directory or file farm writes there is its own (``private_dir``,
``open_own_file``, ``check_own_file``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from farm.errors import FarmError, WorkingDirectoryGone
from farm.ownership import InSticky, controlled_by_another, untrusted_because

__all__ = [
    "working_directory",
    "untrusted_because",
    "controlled_by_another",
    "state_dir",
    "passed_over_state_dirs",
    "passed_over_state_directory",
    "NoStateDirectory",
    "default_store",
    "older_unix_store_name",
    "unix_store_name",
    "runtime_dir",
    "fallback_runtime_dir",
    "UnsafeDirectory",
    "private_dir",
    "make_dirs",
    "open_own_file",
    "check_own_file",
    "check_private",
    "check_runtime_path",
]


def working_directory() -> str:
    """``os.getcwd()``, whose FileNotFoundError in a removed directory named no file and
    was a traceback from `farm up`, `farm worker` and the client commands."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise WorkingDirectoryGone(
            "the working directory was removed: cd to an existing one"
        ) from None


class NoStateDirectory(FarmError):
    """farm has no absolute directory to keep its state in (``state_dir``)."""


def state_dir(*, make: bool = False) -> Path:
    """systemd's ``$STATE_DIRECTORY`` (StateDirectory=farm) where it is a directory of this
    user closed to others, else ``$XDG_STATE_HOME/farm``, else ``~/.local/state/farm``
    (``$HOME``'s, else the user database's home) where no other user controls it
    (``controlled_by_another``): the first of them; NoStateDirectory when none is.
    ``make``: it is about to be used, so a missing part in a sticky directory is made (0700)
    and looked at; else that part is taken as to be made, and nothing is made (a help text,
    a check, a warning)."""
    chosen, passed_over = _choose_state_dir(make)
    if chosen is not None:
        return chosen
    if passed_over:
        # Under a directory every user may write (a container's chmod 777, an emptyDir)
        # every $XDG_STATE_HOME there is passed over too; $STATE_DIRECTORY is the operator's
        # own choice, whose parents may be open to every user (not another user's).
        said = "; ".join(f"{path} {why}" for path, why in passed_over)
        raise NoStateDirectory(
            f"farm has no state directory: {said}; set $STATE_DIRECTORY to a directory of"
            " this user that no other user may write"
        )
    # No home (a container's arbitrary uid, $HOME unset or relative): the store and key
    # went into "~" under the working directory, where callers started elsewhere never look.
    home = os.environ.get("HOME")
    why = (
        f"$HOME ({home}) is not an absolute path"
        if home
        else f"$HOME is not set and uid {os.getuid()} has no home in the user database"
    )
    raise NoStateDirectory(
        f"farm has no state directory: {why}; set $XDG_STATE_HOME (or $STATE_DIRECTORY)"
        " to an absolute directory"
    )


def passed_over_state_dirs() -> list[tuple[Path, str]]:
    """The state directories ``state_dir`` passed over for the one it chose, each with why,
    for the server's warning at start: root under `sudo -E` had its store in the first
    user's home, and after the upgrade started on an empty one in its own, with no word."""
    return _choose_state_dir(make=False)[1]


def passed_over_state_directory() -> tuple[Path, str] | None:
    """``$STATE_DIRECTORY`` and why, where it is set and passed over, for the supervisor's
    warning at start whatever its store: with an explicit ``[server] store`` (as the
    shipped systemd/farm.toml has) nothing said so, and the Executor's key moved."""
    passed = passed_over_state_dirs()
    return passed[0] if passed and passed[0][1].startswith(STATE_DIRECTORY_SAID) else None


#: How a reason about $STATE_DIRECTORY begins (``passed_over_state_dirs``).
STATE_DIRECTORY_SAID = "($STATE_DIRECTORY)"


def _choose_state_dir(make: bool) -> tuple[Path | None, list[tuple[Path, str]]]:
    passed_over: list[tuple[Path, str]] = []
    in_sticky: InSticky = "make" if make else "assume"
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        own = Path(systemd.split(":")[0])
        why = _not_own_state_directory(own, in_sticky)
        if why is None:
            return own, passed_over
        passed_over.append((own, f"{STATE_DIRECTORY_SAID} {why}"))
    for base in _state_homes():
        path = Path(base) / "farm"
        why = controlled_by_another(path, in_sticky=in_sticky)
        if why is None:
            return path, passed_over
        passed_over.append((path, why))
    return None, passed_over


def _not_own_state_directory(path: Path, in_sticky: InSticky) -> str | None:
    """Why ``$STATE_DIRECTORY`` is not used, or None: a directory of this user that no other user
    may write, its group neither (StateDirectoryMode=0770: the Executor refuses a key and
    spill directory in a directory others may write, so a farm there had none), reached
    through no directory nor link another user may change (``controlled_by_another``: a
    root-owned directory inside another user's was chosen), nor one this user may not
    search. DynamicUser= makes it root's link to /var/lib/private/farm. One not made yet is
    looked at as the XDG homes are. A user's own service leaves its own in the environment,
    where `su` keeps it. Directories on the way that every user may write are the operator's
    choice (a container's chmod 777 passes over every home under it: this is the way out)."""
    if not path.is_absolute():
        return "is not an absolute path"
    try:
        path.lstat()
    except FileNotFoundError:  # set by hand, to be made: where no other user could first
        return controlled_by_another(path, in_sticky=in_sticky)
    except OSError as e:  # not to be searched: lexists() said "to be made", and it was chosen
        return f"cannot be used ({e.strerror})"
    why = controlled_by_another(path, open_parents=True)
    if why is not None:
        return why
    try:
        info = path.stat()
    except OSError as e:
        return f"cannot be used ({e.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != os.getuid():
        return f"belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        return f"may be written by others (owner uid {info.st_uid}, mode {mode:o})"
    return None


def _state_homes() -> Iterator[str]:
    """Where the state directory may go, in order (absolute paths only, each once: with
    $HOME unset, ~ is the user database's home, which came twice)."""
    homes = [_xdg("XDG_STATE_HOME"), os.path.expanduser("~/.local/state")]
    with contextlib.suppress(KeyError):  # a uid the user database does not know
        homes.append(os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".local/state"))
    yield from dict.fromkeys(h for h in homes if h and os.path.isabs(h))


def _xdg(name: str) -> str | None:
    """An XDG base directory variable, if set to an absolute path: the spec has a relative
    one ignored, which a command run from another directory would read elsewhere."""
    value = os.environ.get(name)
    return value if value and os.path.isabs(value) else None


#: The one store every server on the host shared before stores were keyed by server.
LEGACY_STORE = "queue.db"


def default_store(port: int | None = None, unix: str | None = None, *, make: bool = False) -> Path:
    """The durable job store when nothing else is said (``farm server`` and ``farm up``): one
    file per server, keyed by its TCP port (``queue-4730.db``), else by its Unix socket path
    (``queue-run-farm-gearman.sock.db``: ``unix_store_name``), so several servers on one
    host need no flags. ``make``: as ``state_dir``'s."""
    home = state_dir(make=make)
    if port is not None:
        return home / f"queue-{port}.db"
    if unix:
        return home / unix_store_name(unix)
    return home / LEGACY_STORE


def older_unix_store_name(unix: str) -> str:
    """The name farm gave the store of Unix path ``unix`` before ``unix_store_name``: each
    run of characters other than ``[A-Za-z0-9_.-]`` one '-', so /X/a-b and /X/a/b met."""
    return "queue-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", unix).strip("-") + ".db"


def unix_store_name(unix: str) -> str:
    """The store's name for Unix path ``unix``, one per path: a plain absolute path (its
    parts of ``[A-Za-z0-9_.]`` only, so its '-'s are its '/'s) keeps its older name; any
    other (a '-' or a space of its own, a relative path, one a port's name would take) gets
    '@' and a hash of its whole absolute path after it, '@' being in no older name."""
    older = older_unix_store_name(unix)
    if re.fullmatch(r"(/[A-Za-z0-9_.]+)+", unix) and not older[6:-3].isdigit():
        return older
    digest = hashlib.blake2b(os.fsencode(os.path.abspath(unix)), digest_size=6).hexdigest()
    return f"{older[:-3]}@{digest}.db"


def runtime_dir() -> Path:
    """Where sockets go when no config names them (never needs root): systemd's
    ``$RUNTIME_DIRECTORY`` when it is farm's (RuntimeDirectory=farm; the fallback in /tmp
    is the service's own under PrivateTmp=), else ``$XDG_RUNTIME_DIR/farm``, else
    ``fallback_runtime_dir()``: either of the first two only where farm's sockets in it
    have paths short enough for a socket (``_sockets_fit``)."""
    systemd = os.environ.get("RUNTIME_DIRECTORY")
    if systemd:
        own = Path(systemd.split(":")[0])
        # farm's own unit (a caller in another unit has its own), made for its user
        if own.name == "farm" and _own_directory(str(own)) and _sockets_fit(own):
            return own
    xdg = _xdg("XDG_RUNTIME_DIR")
    if xdg and _own_directory(xdg) and _sockets_fit(Path(xdg) / "farm"):
        return Path(xdg) / "farm"
    return fallback_runtime_dir()


#: The longest Unix socket path Linux binds or connects to (sun_path: 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


def socket_path_problem(path: str, example: str = "/run/farm/gearman.sock") -> str | None:
    """Why ``path`` cannot be a Unix socket's (None: it can, as far as its length goes);
    ``example`` is a path that can, for the fix."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        return (
            f"{path} is {size} bytes, longer than a Unix socket path may be"
            f" ({MAX_SOCKET_PATH}); choose a shorter path, e.g. {example}"
        )
    return None


#: The sockets farm makes in its runtime directory by default.
_SOCKET_NAMES = ("control.sock", "gearman.sock")


def _sockets_fit(directory: Path) -> bool:
    """Whether farm's sockets in ``directory`` would have paths a socket may have. Under a
    long one, every default address was a config error naming the built-in defaults, and
    `farm up`, `farm status` and farm.Client() failed, though the TCP one would have done."""
    return all(socket_path_problem(str(directory / name)) is None for name in _SOCKET_NAMES)


def _own_directory(path: str) -> bool:
    """Whether ``path`` is a directory of this user that nobody else may write, as the XDG
    spec requires of $XDG_RUNTIME_DIR. `su` (without -) leaves it naming the first user's:
    a farm started then put its sockets where that user could rename our `farm` directory
    and make their own, which `farm ps`, `farm stop` and the Executor then trusted."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def fallback_runtime_dir() -> Path:
    """``/tmp/farm-$UID`` (under ``$TMPDIR`` unless another user controls it: `su` keeps the
    first user's): in a directory every user can write, so checked before use
    (``private_dir``)."""
    path = Path(tempfile.gettempdir()) / f"farm-{os.getuid()}"
    if controlled_by_another(path.parent) is not None:
        return Path("/tmp") / path.name
    return path


class UnsafeDirectory(FarmError):
    """A directory farm would put its sockets in is not private to this user."""


#: What UnsafeDirectory tells the user to do about a runtime directory (the sockets').
RUNTIME_FIX = "remove it (or set XDG_RUNTIME_DIR) and start again"


def private_dir(path: Path, fix: str = RUNTIME_FIX) -> Path:
    """Create ``path`` with mode 0700, or check that the one there is ours and closed to
    others, as OpenSSH and tmux check theirs: another user who made it first would
    receive our sockets (and answer ``farm ps`` and ``farm stop`` in the supervisor's place).
    ``fix`` ends UnsafeDirectory's message: what to do about this directory."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    return check_private(path, fix)


def make_dirs(path: str | os.PathLike[str], mode: int) -> None:
    """``path`` and each of its missing parents made with ``mode`` (less the umask); those
    there are left as they are. Path.mkdir(parents=True) and os.makedirs give the parents
    the umask's mode: under UMask=0002 or 0000 one others may write, in which another user
    could move our private directory aside and put theirs in its place."""
    missing = []
    here = Path(path)
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:  # made meanwhile by another process: as os.makedirs
            pass
    if not Path(path).is_dir():  # a file or a dangling link there: as os.makedirs says
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))


def check_private(path: Path, fix: str = RUNTIME_FIX) -> Path:
    """``path`` is a directory of this user, closed to others (see ``private_dir``), else
    UnsafeDirectory. It must exist: a caller that only looks has nothing to make."""
    info = path.lstat()
    uid = os.getuid()
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory (a link or a file); {fix}")
    if info.st_uid != uid:
        raise UnsafeDirectory(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {uid}): another user may"
            f" have made it to receive farm's files; {fix}"
        )
    if info.st_mode & 0o022:
        raise UnsafeDirectory(
            f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}); {fix}"
        )
    return path


def check_runtime_path(path: str | os.PathLike[str]) -> None:
    """A socket path in the shared-/tmp fallback: make sure its directory is private first."""
    fallback = fallback_runtime_dir()
    if Path(path).parent == fallback:
        private_dir(fallback)


def open_own_file(path: str | os.PathLike[str], *, append: bool, mode: int = 0o644) -> int:
    """Open a file we write (a pid file, a log) without following a link at ``path``: in a
    directory other users can write, such as /tmp, a link planted there would otherwise
    have us, perhaps as root, truncate or write the file it points at. A file another user
    could have planted is refused too (``check_own_file``). The fd, or OSError (ELOOP for a
    link, EPERM for a file that is not ours to write)."""
    # O_NONBLOCK: a FIFO planted at the path must not hang the open (it is refused below);
    # no O_TRUNC: a file is truncated only once it is known to be ours.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags | (os.O_APPEND if append else 0), mode)
    try:
        check_own_file(path, os.fstat(fd))
        os.set_blocking(fd, True)
        if not append:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_own_file(path: str | os.PathLike[str], info: os.stat_result) -> None:
    """PermissionError unless the file opened at ``path`` is one we may write as ours (a
    regular one with no other link): of this user or root, or of the owner of a directory
    nobody else may write. Another user who made it first (in /tmp, say) would read what
    we write there and could change it later: a pid file they rewrite has root's logrotate
    signal their choice of process; a hard link would have us append to another file.
    (/dev/null, root's, stays a valid log file.)"""
    where = os.fspath(path)
    if stat.S_ISREG(info.st_mode) and info.st_nlink != 1:
        raise PermissionError(errno.EPERM, f"{where} has other links ({info.st_nlink})")
    if info.st_uid in (os.geteuid(), 0):
        return
    parent = os.lstat(os.path.dirname(os.path.abspath(where)))
    if parent.st_uid == info.st_uid and not parent.st_mode & 0o022:
        return  # the directory is theirs alone: a file the operator put there for them
    raise PermissionError(
        errno.EPERM,
        f"{where} belongs to uid {info.st_uid}, who may have made it to read or change what"
        " farm writes there; remove it, or choose a path in a directory of this user",
    )
