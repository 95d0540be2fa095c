"""The store of an older farm: before stores were keyed by server (``queue-PORT.db``), every
server on the host shared ``queue.db``. The server on LEGACY_PORT adopts it at start when its
own store does not exist yet; any other server started beside one says where the queued jobs
it does not run are (docs/operations.md, "Upgrading")."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from farm.errors import FarmError
from farm.paths import LEGACY_STORE, NoStateDirectory, default_store, older_unix_store_name
from farm.server.options import ServerOptions
from farm.server.otherstores import held_jobs, queued_beside, queued_in, queued_passed_over
from farm.server.settings import NO_STORE, default_store_path
from farm.server.storecheck import ASIDE_TABLE

__all__ = [
    "LEGACY_PORT",
    "LegacyStoreBusy",
    "adopt_legacy_store",
    "adopt_older_unix_store",
    "legacy_jobs_beside",
    "take_older_store",
    "warn_stranded",
]

log = logging.getLogger("farm.server")

#: The port whose server adopts ``LEGACY_STORE`` (gearmand's, the default before the change).
LEGACY_PORT = 4730


def take_older_store(options: ServerOptions) -> str | None:
    """Adopt the older farm's store (before this server opens its own); the one line this
    server must not start past (an older farm's server still holds that store), or None."""
    try:
        if adopt_legacy_store(options.store) or adopt_older_unix_store(options):
            log.warning("adopted the job store of an older farm as %s", options.store)
    except LegacyStoreBusy as exc:  # says its own fix: another store would strand its jobs
        return str(exc)
    except OSError as exc:
        log.warning("cannot adopt the older job store as %s: %s", options.store, exc)
    return None


def warn_stranded(options: ServerOptions) -> None:
    """Say where the queued jobs this server does not run are: an older farm's store, the
    other default stores beside this one, the state directories passed over
    (farm.server.otherstores); for a server on memory alone, its default store only.
    Called once the server listens, off its start: the look reads other stores, and a
    server refused its own store (a second one on a port) had first advised taking a store
    it could not run."""
    try:
        _warn_stranded(options)
    except Exception as exc:  # an unreadable directory, a store SQLite cannot read: it is
        # only a warning, and one escaping here would skip the server's flush at its stop
        log.warning("cannot look for job stores this server does not run: %s", exc)


def _warn_stranded(options: ServerOptions) -> None:
    if options.store == NO_STORE:  # no store beside which to look: its default one alone
        _warn_own_default(options, [])
        return
    if stranded := legacy_jobs_beside(options.store):  # which server they were for: unknown
        path, count = stranded
        log.warning(
            "the job store of an older farm, %s, %s that this server does not run: give it"
            " that store (%s) to run them; docs/operations.md, Upgrading",
            path,
            held_jobs(count),
            _fix(options, path),
        )
    default = _default_or_none(LEGACY_PORT)
    if default is not None and Path(options.store).parent == default.parent:
        _warn_passed_over(default.parent)
    beside = queued_beside(options.store)
    for path, count in beside:  # a server moved off that port?
        log.warning(
            "the job store %s %s that no running server serves: its server runs them when"
            " it starts again; if this one took its place (a new port or socket), give it"
            " that store (%s) to run them",
            path,
            held_jobs(count),
            _fix(options, path),
        )
    _warn_own_default(options, beside)


def _warn_own_default(options: ServerOptions, beside: list[tuple[Path, int]]) -> None:
    """A warning where this server's default store, not the one it runs, holds queued
    jobs (and is not among those ``beside`` it, already named)."""
    own = _own_default(options)
    if own is None or own in {p for p, _ in beside} or not (count := queued_in(own)):
        return
    if options.store == NO_STORE:
        # Run with jobs in memory only (a test, a trial), the jobs its clients were told
        # JOB_CREATED for in its default store waited there with no word.
        log.warning(
            "the job store %s %s that no running server serves: it is this server's"
            " default store, and this server keeps jobs in memory only; give it that store"
            " (%s) to run them (docs/operations.md, Moving the job store)",
            own,
            held_jobs(count),
            _fix(options, own),
        )
        return
    # A store moved to another disk, its jobs left behind?
    log.warning(
        "the job store %s %s that no running server serves: it is this server's"
        " default store, and this server runs %s; give it that store (%s) until it"
        " is empty, or stop the server and move that file (and its -wal) to %s"
        " while this one holds no job (docs/operations.md, Moving the job store)",
        own,
        held_jobs(count),
        options.store,
        _fix(options, own),
        options.store,
    )


def _own_default(options: ServerOptions) -> Path | None:
    """This server's default store (``queue-PORT.db`` in the state directory) where it runs
    another, named one, or none (memory only), else None. An operator who named a store on
    another disk (`[server] store`, `--store`) left the jobs queued in the default one
    behind, and nothing said so: the look beside a store is for default stores alone."""
    try:
        own = Path(default_store_path(options.listen, options.unix))
    except NoStateDirectory:
        return None
    if options.store == NO_STORE:
        return own
    return None if _same_file(own, Path(options.store)) else own


def _same_file(one: Path, other: Path) -> bool:
    """Whether two names are one file: a store named through a directory's link or by a
    relative path is the default one spelled another way, and a server run on it was told
    that its own store held jobs no server ran. Where one is missing, where the names lead."""
    try:
        return os.path.samefile(one, other)
    except OSError:
        return one.resolve() == other.resolve()


def _fix(options: ServerOptions, path: Path) -> str:
    return f"--store {path}" if options.hints == "flags" else f'[server] store = "{path}"'


def _warn_passed_over(home: Path) -> None:
    """A warning for each state directory passed over for ``home``, the server's, that holds
    this user's stores (root under `sudo -E`, upgraded, started on an empty store with no
    word of the one in the first user's home), naming them and their sizes."""
    for directory, why, stores in queued_passed_over():
        # ascii(): a name in another user's directory may hold a newline or an escape
        # sequence, to forge a log line or rewrite the terminal.
        held = ", ".join(f"{ascii(p.name)} ({n} bytes)" for p, n in stores)
        log.warning(
            "the state directory %s %s, so it is passed over for %s; there are this user's"
            " stores %s, which may hold queued jobs this server does not run (named by size,"
            " not opened): another user may have"
            " changed them, so check each file before you move it into %s"
            " (docs/operations.md, Upgrading)",
            directory,
            why,
            home,
            held,
            home,
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
    return _adopt(old, new)


def adopt_older_unix_store(options: ServerOptions) -> bool:
    """Rename the store an older farm named for this server's Unix socket (paths:
    ``older_unix_store_name``) to the one it has now, when the server keeps its default
    store on a Unix socket alone, that name changed, and its store does not exist yet or
    holds nothing while the older one holds jobs (``_replaceable``); True if done. The older
    name may be another server's too: the plain path it also stands for (/X/a/b.sock for
    /X/a-b.sock), whose store it still is, or a port's (/4731): then it is not taken
    (``queued_beside`` names it while it holds jobs). LegacyStoreBusy while a server holds
    it that can only be an older farm's."""
    if options.listen or not options.unix:
        return False
    unix = options.unix[0]
    try:
        new = default_store(None, unix)
    except NoStateDirectory:
        return False
    old = new.with_name(older_unix_store_name(unix))
    if Path(options.store) != new or old == new or not old.exists():
        return False
    key = old.name[len("queue-") : -len(".db")]
    if key.isdigit() or Path("/" + key.replace("-", "/")).parent.is_dir():
        return False
    with _one_starter(new.parent):  # looked at again under it: another may have adopted it
        if not old.exists() or (new.exists() and not _replaceable(new, old)):
            return False
        return _adopt(old, new)


@contextlib.contextmanager
def _one_starter(directory: Path) -> Iterator[None]:
    """The state directory flock()ed while a store is judged, unlinked and replaced: two
    servers starting at once on one path each judged the new store empty, and the second
    unlinked it after the first had renamed the older one, its jobs, in its place. The
    lock is the directory's own, so no file is left; the kernel drops it with the process.
    Where it cannot be taken (NFS: Linux makes flock an fcntl lock there, which needs a
    file open for writing, EBADF), it goes on unlocked, as it did before the lock."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the other's check and rename: a moment
        except OSError as exc:
            log.debug(
                "the state directory %s cannot be locked (%s): adopting unlocked", directory, exc
            )
        yield
    finally:
        os.close(fd)


def _replaceable(new: Path, old: Path) -> bool:
    """Whether ``new`` holds nothing and ``old`` holds jobs, so that ``old`` may take its
    place: after a downgrade an older farm queued its jobs under the older name, and after
    the next upgrade they waited there for ever, the new store existing (empty). A store
    with any job, or any row in its damaged_jobs, or one that cannot be read or is held by
    a server, stays; the warning of stores beside then names ``old`` with its fix."""
    if not queued_in(old) or _locked(new):
        return False
    try:
        db = sqlite3.connect(f"{new.absolute().as_uri()}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return False
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in {"jobs", ASIDE_TABLE} & tables:
            if db.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                return False
    except sqlite3.Error:
        return False
    finally:
        db.close()
    log.warning("the job store %s holds no job: the older farm's %s takes its place", new, old)
    # Its WAL before it (a WAL left without its store would be read into the one renamed
    # here); stopped half-way, the store left is still empty and is replaced at next start.
    for suffix in ("-wal", "-shm", ""):
        new.with_name(new.name + suffix).unlink(missing_ok=True)
    return True


def _adopt(old: Path, new: Path) -> bool:
    """Rename the store ``old`` (its WAL first, its disk reserve too) to ``new``, unless a
    server holds it."""
    if _locked(old):
        raise LegacyStoreBusy(
            f"the job store of an older farm, {old}, is in use by another server (an older"
            " farm still running?): stop it first, and this server adopts its jobs"
        )
    # WAL first: committed jobs may still be only there. The reserve (farm.server.reserve)
    # was left for ever under the old name, 8 MB, the new store making its own; renamed, its
    # room stays held for the new store, which on a full disk could not make one.
    for suffix in ("-wal", "-shm", "-reserve"):
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
    new = Path(store)
    old = new.with_name(LEGACY_STORE)
    default = _default_or_none(LEGACY_PORT)
    beside_default = default is not None and new.parent == default.parent
    if not beside_default or not new.name.startswith("queue-") or not old.exists():
        return None  # only beside a default store: queue.db elsewhere is not an older farm's
    # Read-only, its jobs left as the older farm left them, for the operator to serve.
    count = queued_in(old)
    return (old, count) if count else None


def _locked(path: Path) -> bool:
    """Whether a server holds the SQLite file (its exclusive lock refuses a write at once)."""
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
