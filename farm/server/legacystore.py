"""The store of an older farm: before stores were keyed by server (``queue-PORT.db``), every
server on the host shared ``queue.db``. The server on LEGACY_PORT adopts it at start when its
own store does not exist yet; any other server started beside one says where the queued jobs
it does not run are (docs/operations.md, "Upgrading")."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from farm.errors import FarmError
from farm.paths import LEGACY_STORE, NoStateDirectory, default_store
from farm.server.options import ServerOptions
from farm.server.otherstores import queued_beside, queued_passed_over

__all__ = [
    "LEGACY_PORT",
    "LegacyStoreBusy",
    "adopt_legacy_store",
    "legacy_jobs_beside",
    "take_older_store",
]

log = logging.getLogger("farm.server")

#: The port whose server adopts ``LEGACY_STORE`` (gearmand's, the default before the change).
LEGACY_PORT = 4730


def take_older_store(options: ServerOptions) -> str | None:
    """Adopt the older farm's store, or say where its queued jobs are, and those of the other
    default stores beside this one (farm.server.otherstores); the one line this server must
    not start past (an older farm's server still holds that store), or None."""
    try:
        if adopt_legacy_store(options.store):
            log.warning("adopted the job store of an older farm as %s", options.store)
    except LegacyStoreBusy as exc:  # says its own fix: another store would strand its jobs
        return str(exc)
    except OSError as exc:
        log.warning("cannot adopt the older job store as %s: %s", options.store, exc)
    if stranded := legacy_jobs_beside(options.store):  # which server they were for: unknown
        path = stranded[0]
        fix = f"--store {path}" if options.hints == "flags" else f'[server] store = "{path}"'
        log.warning(
            "the job store of an older farm, %s, holds %d queued jobs that this server"
            " does not run: give it that store (%s) to run them; docs/operations.md,"
            " Upgrading",
            *stranded,
            fix,
        )
    default = _default_or_none(LEGACY_PORT)
    if default is not None and Path(options.store).parent == default.parent:
        _warn_passed_over(default.parent)
    for path, count in queued_beside(options.store):  # a server moved off that port?
        fix = f"--store {path}" if options.hints == "flags" else f'[server] store = "{path}"'
        log.warning(
            "the job store %s holds %d queued jobs that no running server serves: its"
            " server runs them when it starts again; if this one took its place (a new"
            " port or socket), give it that store (%s) to run them",
            path,
            count,
            fix,
        )
    return None


def _warn_passed_over(home: Path) -> None:
    """A warning for each state directory passed over for ``home``, the server's (root under
    `sudo -E`, upgraded, started on an empty store with no word of the one in the first
    user's home), with this user's stores there that hold queued jobs."""
    for directory, why, stores in queued_passed_over():
        held = ", ".join(f"{p.name} holds {n} queued jobs" for p, n in stores)
        fix = (
            f"; there {held}, which this server does not run: another user may have changed"
            f" them, so check each file before you move it into {home} (docs/operations.md)"
            if stores
            else ""
        )
        log.warning(
            "the state directory %s %s, so it is passed over for %s%s", directory, why, home, fix
        )


class LegacyStoreBusy(FarmError):
    """An older farm's server still has the store this one would adopt."""


def adopt_legacy_store(store: str | os.PathLike[str]) -> bool:
    """Rename the pre-change ``queue.db`` (and its WAL) to the store of the server on
    LEGACY_PORT when that one does not exist yet, so no queued job is stranded. True if done.
    LegacyStoreBusy while an older farm's server holds it: renamed under that server, its
    files were taken, and the server starting now made an empty store beside them, which
    then kept every later start from adopting them."""
    new = Path(store)
    if new != _default_or_none(LEGACY_PORT) or new.exists():
        return False
    old = new.with_name(LEGACY_STORE)
    if not old.exists():
        return False
    if _locked(old):
        raise LegacyStoreBusy(
            f"the job store of an older farm, {old}, is in use by another server (an older"
            " farm still running?): stop it first, and this server adopts its jobs"
        )
    for suffix in ("-wal", "-shm"):  # WAL first: committed jobs may still be only there
        side = old.with_name(old.name + suffix)
        if side.exists():
            side.rename(new.with_name(new.name + suffix))
    old.rename(new)
    return True


def _default_or_none(port: int) -> Path | None:
    """``default_store(port)``, or None where there is no state directory (so no default
    store: the one in use was named)."""
    try:
        return default_store(port)
    except NoStateDirectory:
        return None


def legacy_jobs_beside(store: str | os.PathLike[str]) -> tuple[Path, int] | None:
    """An older farm's ``queue.db`` beside ``store``, a default store (``default_store``),
    and the jobs still queued in it (None when it holds none, or cannot be read now: an
    older farm's server still runs them). Only the server on LEGACY_PORT adopts that file,
    and an older farm's server on another port or a Unix socket kept its jobs there too:
    upgraded, it started on an empty store of its own, and nothing said where its jobs
    were."""
    import sqlite3

    new = Path(store)
    old = new.with_name(LEGACY_STORE)
    default = _default_or_none(LEGACY_PORT)
    beside_default = default is not None and new.parent == default.parent
    if not beside_default or not new.name.startswith("queue-") or not old.exists():
        return None  # only beside a default store: queue.db elsewhere is not an older farm's
    try:  # read-only: its jobs stay as the older farm left them, for the operator to serve
        db = sqlite3.connect(old.absolute().as_uri() + "?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return None
    try:
        count: int = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return (old, count) if count else None


def _locked(path: Path) -> bool:
    """Whether a server holds the SQLite file (its exclusive lock refuses a write at once)."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0)
    except sqlite3.Error:
        return False
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc)
    except sqlite3.Error:
        return False  # not a database: the server says so once it is renamed
    finally:
        db.close()
    return False
