"""The queued jobs of the other default stores beside this server's (``queue-PORT.db``),
and of this user's stores in a state directory passed over (``queued_passed_over``).

Each server keeps its own store, keyed by its TCP port or Unix socket
(farm.paths.default_store). A farm moved to another port (a new ``[server] listen``, another
``-p``) started on the empty store of that port, and the background jobs its clients had
been told JOB_CREATED for stayed in the old store, run by nothing, with no word. So a server
on a default store names, at start, the stores beside it that hold queued jobs and that no
running server holds (a running server's exclusive lock refuses the look: it runs its own).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

from farm.paths import NoStateDirectory, passed_over_state_dirs, state_dir
from farm.server.walcopy import held

log = logging.getLogger("farm.server")

__all__ = ["MAY_HOLD", "held_jobs", "queued_beside", "queued_passed_over", "queued_in"]

#: Stores looked into at most: a start must not read a directory of thousands.
MAX_LOOKED_AT = 32
#: Jobs counted at most in one store: a count of millions held its lock for seconds.
MAX_COUNTED = 1000
#: A write-ahead log larger than this is not read (its recovery holds the store's lock while
#: it runs, and that store's own server, starting meanwhile, would be refused): such a store
#: is named as one that may hold jobs.
MAX_WAL_READ = 4 << 20
#: The count of a store named as one that may hold jobs, not looked into.
MAY_HOLD = -1


def held_jobs(count: int) -> str:
    """``count`` (from queued_in) in words, for a warning: "holds 3 queued jobs"."""
    if count == MAY_HOLD:
        return "may hold queued jobs (its write-ahead log is too large to read at start)"
    more = " or more" if count >= MAX_COUNTED else ""
    return f"holds {count}{more} queued job{'' if count == 1 else 's'}"


def queued_beside(store: str | Path) -> list[tuple[Path, int]]:
    """The other default stores beside ``store`` (itself a default store) that hold queued
    jobs no running server serves, with their counts (queued_in); empty for a store given
    elsewhere. Only this user's regular files (a link's target, a FIFO are none of ours)."""
    path = Path(store)
    try:
        home = state_dir()
    except NoStateDirectory:
        return []
    if path.parent != home or not path.name.startswith("queue-"):
        return []  # a store the operator named: the files beside it are none of ours
    names = sorted(p for p in home.glob("queue-*.db") if p.name != path.name)
    return _holding([p for p in names if _own_file(p)])


def queued_passed_over() -> list[tuple[Path, str, list[tuple[Path, int]]]]:
    """Each state directory ``state_dir`` passed over (farm.paths.passed_over_state_dirs)
    that holds stores of this user's (an older farm's ``queue.db`` too), why, and those
    stores, each with its size in bytes. Root under `sudo -E` kept its store in the first
    user's ~/.local/state/farm; once that was passed over, its server started on an empty
    store, and nothing said where the jobs were. Only this user's files are counted:
    another user's was never this farm's. Nothing there is opened, only named: the owner of
    that directory could swap a FIFO in, whose open (SQLite's, read-only) blocks, and the
    server's start with it. A directory not there, or with none, is not named (`sudo -E`
    users were told of their own empty one at every start)."""
    found = []
    for directory, why in passed_over_state_dirs():
        try:
            names = sorted(directory.glob("queue*.db"))
        except OSError:
            names = []
        if len(names) > MAX_LOOKED_AT:  # that user may have filled it: said, not looked at
            log.warning(
                "%d more names in %s, passed over, were not looked at (only the first %d"
                " by name are)",
                len(names) - MAX_LOOKED_AT,
                directory,
                MAX_LOOKED_AT,
            )
        mine = [(p, size) for p in names[:MAX_LOOKED_AT] if (size := _own_size(p)) is not None]
        if mine:
            found.append((directory, why, mine))
    return found


def _own_size(path: Path) -> int | None:
    """The size of ``path``, a regular file of this user (lstat: not opened), else None."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() else None


def _own_file(path: Path) -> bool:
    """A regular file of this user's, not followed through a link: SQLite followed a link
    and made its -shm beside the target, and opening a FIFO hung the server for ever."""
    return _own_size(path) is not None


def _holding(paths: list[Path]) -> list[tuple[Path, int]]:
    """The stores among ``paths`` (the first MAX_LOOKED_AT) that hold queued jobs."""
    if len(paths) > MAX_LOOKED_AT:
        log.warning(
            "%d more job stores in %s were not looked into (only the first %d by name are)",
            len(paths) - MAX_LOOKED_AT,
            paths[0].parent,
            MAX_LOOKED_AT,
        )
    found = []
    for path in paths[:MAX_LOOKED_AT]:
        count = queued_in(path)
        if count:
            found.append((path, count))
    return found


def queued_in(path: Path) -> int:
    """The jobs queued in the store at ``path`` (at most MAX_COUNTED), MAY_HOLD for one whose
    write-ahead log is too large to read now, 0 when it cannot be read (a running server
    holds it, or it is not a store). The store is left as it was, and its own server can
    start meanwhile:

    - A server's lock on it (asked of the kernel, walcopy.held): not looked into.
    - No -wal (a store stopped cleanly): nothing is written to its file but through a -wal,
      so the file is read as it is, with no lock and no -wal or -shm made (immutable), and
      the count is dropped if a -wal appeared meanwhile (its server started).
    - A -wal (a server was killed, its latest jobs there): the log is read by SQLite's usual
      read-only open, which leaves a -shm (not removed: another SQLite client may be using
      it by then)."""
    wal = path.with_name(path.name + "-wal")
    if not _own_file(path) or held(path):
        return 0
    try:
        wal_size: int | None = wal.lstat().st_size
    except FileNotFoundError:
        wal_size = None
    except OSError:
        return 0
    if wal_size is None:
        count = _count(path, "?mode=ro&immutable=1")
        return 0 if os.path.lexists(wal) else count
    if wal_size > MAX_WAL_READ:
        return MAY_HOLD
    return _count(path, "?mode=ro")


def _count(path: Path, query: str) -> int:
    try:
        db = sqlite3.connect(path.absolute().as_uri() + query, uri=True, timeout=0)
    except sqlite3.Error:
        return 0
    try:
        row = db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM jobs LIMIT ?)", (MAX_COUNTED,))
        count: int = row.fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        db.close()
    return count
