"""Where `farm up` makes its files: the store, the job server's Unix socket and the control
socket. The rules a config is refused by before anything starts live here, once: `farm up`
raises the first it meets, `farm check` asks every one of them, making nothing (no
directory made, no socket bound, no running farm asked).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import ConfigError, FarmError
from farm.paths import check_private, fallback_runtime_dir

if TYPE_CHECKING:  # farm ps/scale/stop import the control socket's code, not the config's
    from farm.config import Config, ServerConfig

__all__ = [
    "UNIT_DIRECTORIES",
    "check_server_places",
    "control_place_error",
    "made_by_unit",
    "place_errors",
    "refuse_non_socket",
    "server_place_errors",
    "unit_made_places",
    "unwritable_directory",
]

#: What systemd makes, owned by the unit's User=, before `farm up` starts in the shipped
#: unit (systemd/farm.service), and which is not there while it is stopped (/run/farm) or
#: before its first start (/var/lib/farm): its setting, by path.
UNIT_DIRECTORIES = {"/run/farm": "RuntimeDirectory=farm", "/var/lib/farm": "StateDirectory=farm"}


def made_by_unit(where: str) -> str | None:
    """The directory of ``UNIT_DIRECTORIES`` that ``where`` is, or lies in, when it is not
    there (the unit makes it before `farm up` starts), else None."""
    for made in UNIT_DIRECTORIES:
        inside = where == made or where.startswith(made + "/")
        if inside and not os.path.lexists(made):
            return made
    return None


def unwritable_directory(where: str, *, unit_makes: bool = False) -> str | None:
    """Why this user cannot make files in ``where``, or None. Nothing is made here: the
    sockets' directory is made private (0700) first where it is the shared /tmp fallback.
    ``unit_makes``: a missing directory of ``UNIT_DIRECTORIES`` counts as made (`farm
    check`, run outside the unit, says so as a warning)."""
    if unit_makes and made_by_unit(where) is not None:
        return None
    here = where
    while not os.path.exists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)  # the nearest that exists decides whether the rest can be
    if not os.path.isdir(here):  # as make_dirs said it, where "not writable" misled
        why = f"{here} exists and is not a directory"
    elif os.access(here, os.W_OK | os.X_OK):
        return None
    elif _read_only(here):  # the unit's ProtectSystem=strict: no user may write there
        why = f"{here} is on a read-only file system (ProtectSystem? ReadWritePaths=)"
    else:
        why = f"{here} is not writable by this user (uid {os.getuid()})"
    return why if here == where else f"cannot create {where}: {why}"


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def server_place_errors(
    config: ServerConfig, source: str, *, unit_makes: bool = False
) -> list[ConfigError]:
    """A ConfigError (exit 2) for each of ``[server] store`` this user cannot make or read
    and write, and the Unix socket of ``[server] listen`` it cannot make: the server could
    never start, and `farm up` said so in four lines and exit 1, restarted for ever."""
    errors = []
    if config.store != "none":
        why = unwritable_directory(os.path.dirname(config.store), unit_makes=unit_makes)
        readable = os.access(config.store, os.R_OK | os.W_OK)
        if why is None and os.path.exists(config.store) and not readable:
            why = f"{config.store} is not readable and writable by this user (uid {os.getuid()})"
        if why:  # the directory even when the file is there: the journal is made beside it
            errors.append(ConfigError(f"{source}: server.store: {why}; {_store_fix(config.store)}"))
    if config.unix:
        why = unwritable_directory(os.path.dirname(config.unix), unit_makes=unit_makes)
        if _not_a_socket(config.unix):  # the server's bind refused it, exit 1, restarted
            errors.append(
                ConfigError(
                    f"{source}: server.listen: unix:{config.unix} exists and is not a socket:"
                    " not replacing it; name a path for the socket where no file is, e.g."
                    " unix:/run/farm/gearman.sock"
                )
            )
        elif why:
            errors.append(
                ConfigError(
                    f"{source}: server.listen: cannot make the socket {config.unix}: {why};"
                    " let this user write there, or name a path where it may, e.g."
                    " unix:/run/farm/gearman.sock"
                )
            )
    return errors


def _store_fix(store: str) -> str:
    """How to give `farm up`'s user the store at ``store``. A store file that is there (a
    regular file, not empty) may hold queued jobs: another file, or none, left them behind
    (as farm.server.refusals' hint ``held`` says, where the server itself cannot open it)."""
    try:
        info = os.lstat(store)
        held = stat.S_ISREG(info.st_mode) and info.st_size > 0
    except OSError:
        held = False
    if held:
        return (
            "it may hold queued jobs: fix the permissions, attributes (lsattr; chattr -i) or"
            " owner of the file or its directory for this user; another store or"
            ' "none" leaves its queued jobs behind'
        )
    return 'let this user write there, or name a file it may write (or "none": memory only)'


def check_server_places(config: ServerConfig, source: str) -> None:
    """The first of ``server_place_errors``, raised: `farm up` stops there, exit 2."""
    for error in server_place_errors(config, source):
        raise error


def _not_a_socket(path: str) -> bool:
    """Whether something other than a socket (a file, a directory, a link) is at ``path``:
    farm never replaces it, so no socket can be made there."""
    try:
        return not stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:  # not there (or not ours to look at: the bind says)
        return False


def refuse_non_socket(path: str, source: str | None = None) -> None:
    """ConfigError when something other than a socket is at the control socket's path: a
    typo (control = "/etc/farm/farm.toml") must not delete the file it names. Exit 2, as
    the job server's socket path's (systemd does not restart a farm for it every few
    seconds), in the config's one-line form: ``source`` is its file."""
    if _not_a_socket(path):
        key = f"{source}: supervisor.control" if source else "[supervisor] control"
        raise ConfigError(
            f"{key}: {path} exists and is not a socket: not replacing it; set it to a path"
            " for the control socket, e.g. /run/farm/control.sock"
        )


def control_place_error(path: str, source: str, *, unit_makes: bool = False) -> FarmError | None:
    """Why `farm up` would not make its control socket at ``path``, asked without making
    it: a fallback directory (/tmp/farm-$UID) that is not private (UnsafeDirectory, exit
    1), a file there or a directory this user cannot write (ConfigError, exit 2).
    A socket something listens on is left to `farm up`, which asks whether a supervisor
    answers on it (where it cannot replace it, "another process answers at", exit 1: a
    running farm of another user in a directory this user cannot write is not a config
    mistake); one nobody listens on is a leftover, to be replaced, so the directory counts."""
    parent = os.path.dirname(path) or "."
    try:
        if Path(parent) == fallback_runtime_dir() and os.path.lexists(parent):
            check_private(Path(parent))
        refuse_non_socket(path, source)
    except FarmError as exc:
        return exc
    if os.path.lexists(path) and not _left_over(path):
        return None
    why = unwritable_directory(parent, unit_makes=unit_makes)
    if why is None:
        return None
    return ConfigError(
        f"{source}: supervisor.control: cannot make the socket {path}: {why}; set it to"
        " a path in a directory the farm may write, e.g. /run/farm/control.sock"
    )


def _left_over(path: str) -> bool:
    """Whether nothing listens on the socket at ``path`` (ECONNREFUSED): `farm check` said
    ok of one in a directory this user cannot write, and `farm up` "another process answers
    ... Permission denied" (exit 1), though nothing answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError:  # a full backlog (EAGAIN), no right to connect: someone's, alive
            return False
    return False


def place_errors(config: Config, source: str) -> list[FarmError]:
    """Every refusal of `farm up` about where its files go, in the order it meets them
    (after ``check_listen_name``), with the unit's own directories counted as made."""
    errors: list[FarmError] = []
    control = control_place_error(config.supervisor.control, source, unit_makes=True)
    if control is not None:
        errors.append(control)
    if config.local_server:
        errors += server_place_errors(config.server, source, unit_makes=True)
    return errors


def unit_made_places(config: Config) -> dict[str, list[str]]:
    """Each directory of ``UNIT_DIRECTORIES`` that is not there and this user cannot make
    -> the keys whose files go in it: `farm up` finds it made in the unit, nowhere else."""
    wanted = [("supervisor.control", config.supervisor.control)]
    if config.local_server:
        if config.server.store != "none":
            wanted.append(("server.store", config.server.store))
        if config.server.unix:
            wanted.append(("server.listen", config.server.unix))
    made: dict[str, list[str]] = {}
    for key, path in wanted:
        directory = made_by_unit(os.path.dirname(path))
        if directory is not None and unwritable_directory(directory) is not None:
            made.setdefault(directory, []).append(key)
    return made
