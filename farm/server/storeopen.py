"""The job store's SQLite database opened: ours alone for the server's life, WAL, the
sync asked for, the schema (a store of an older farm given the columns it lacks, the jobs
gearmand queued in the file moved into it), and checkpoints sized to the disk reserve.

Split from farm/server/store.py, which stages the jobs and writes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from pathlib import Path

from farm.paths import controlled_by_another, make_dirs
from farm.protocol.codec import RESERVED, RESERVED_PREFIX
from farm.server.reserve import DiskReserve
from farm.server.storefile import (
    StoreError,
    StoreInUse,
    StoreUnopenable,
    close_to_others,
    drop_empty_journal,
    drop_made,
    io_failed,
    may_hold_jobs,
    owner_only,
    unreadable,
)
from farm.server.storetables import GEARMAND_COLUMNS, STORE_FORMAT, not_farms
from farm.server.walcheck import keep_damaged, wal_damage
from farm.server.walcopy import held as server_holds

__all__ = ["STORE_FORMAT", "open_database"]

log = logging.getLogger("farm.server")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id        INTEGER PRIMARY KEY,
    function  BLOB NOT NULL,
    uniq      BLOB NOT NULL,
    data      BLOB NOT NULL,
    priority  INTEGER NOT NULL,
    reducer   BLOB,
    run_at    REAL NOT NULL DEFAULT 0,
    created   REAL NOT NULL DEFAULT 0,
    retries   INTEGER NOT NULL DEFAULT 0,
    local     INTEGER NOT NULL DEFAULT 1,
    checksum  INTEGER
)
"""
#: Columns a store of an older farm lacks, added at open with their defaults (its rows read
#: as a submit time unknown, no death of a worker counted, and submitted on the Unix socket:
#: no TCP peer's unique key joins them, whichever side they came from), and no checksum.
_ADDED_COLUMNS = {
    "created": "REAL NOT NULL DEFAULT 0",
    "retries": "INTEGER NOT NULL DEFAULT 0",
    "local": "INTEGER NOT NULL DEFAULT 1",
    # NULL: a row written without one (an older farm's, gearmand's taken over) is trusted.
    "checksum": "INTEGER",
}

#: Seconds the server waits for the store's lock at start. Another server holds it for its
#: whole life (locking_mode=EXCLUSIVE), so waiting SQLite's default 5 s only delayed the
#: refusal; this is a moment for a process that touches the file in passing.
OPEN_WAIT = 0.2
#: SQLite's busy timeout once the store is ours (Python's default), as before OPEN_WAIT.
BUSY_TIMEOUT_MS = 5000


def open_database(path: str, sync: str, reserve: DiskReserve) -> tuple[sqlite3.Connection, int]:
    """The store at ``path`` opened (made if need be), and the id its next row takes; the
    reserve made beside it. StoreError (DamagedStore: corrupt pages; StoreUnreadable: any
    other error of SQLite's reading it, storefile.unreadable; StoreUnopenable: a store file
    that was there and could not be opened) when it cannot be."""
    held = may_hold_jobs(path)  # before owner_only makes a file where there is none
    if held and not server_holds(path) and (damage := wal_damage(path)) is not None:
        keep_damaged(path, damage)  # before SQLite's recovery drops it without a word
    blank = _blank(path)
    made: list[str] = []  # the side files owner_only made, removed if the store is refused
    db: sqlite3.Connection | None = None
    try:
        try:
            make_dirs(Path(path).parent, 0o700)
            made = owner_only(path)
            _warn_if_others_control(path)
            db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=OPEN_WAIT
            )
            # One server per store: a second one would replay and run the same jobs.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            # Before the first write; damage was judged before the open (owner_only).
            _refuse_unreadable(db, path)
            db.execute("PRAGMA journal_mode=WAL")
            # Debian's SQLite zeroes every freed page (secure_delete), so deleting a job wrote
            # its whole payload to the WAL again, and on a full disk no delete fit; FAST still
            # zeroes what it can without more writes.
            db.execute("PRAGMA secure_delete=FAST")
            db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            db.execute(SCHEMA)
            if added := _add_columns(db, reserve):
                log.warning(
                    "the job store %s, an older farm's, gained the columns %s (its jobs get"
                    " their defaults; an older farm still reads it: docs/operations.md,"
                    " Upgrading)",
                    path,
                    ", ".join(added),
                )
            db.execute("BEGIN IMMEDIATE")
            _take_over_gearmand(db, path)
            row = db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()
            db.execute("COMMIT")
            if not held:
                # A new store's tables into its own file at once: until its first
                # checkpoint they were in its -wal alone, and a server killed before that
                # left a file that storetables.look reads past 64 MiB of -wal as "may not
                # be farm's".
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            close_to_others(path)  # read as farm's store, or new: its mode is ours to change
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StoreInUse(f"the job store {path} is in use by another server") from exc
            if held and io_failed(exc):
                raise unreadable(path, exc) from None  # a full disk, say: not the file's mode
            raise _unopened(path, exc, held) from exc
        except sqlite3.DatabaseError as exc:  # corrupt pages: another path would lose the jobs
            raise unreadable(path, exc) from None
        except (FileExistsError, NotADirectoryError) as exc:  # a file where a directory goes
            where = exc.filename or Path(path).parent
            raise StoreError(
                f"cannot open the job store {path}: {where} is not a directory"
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise _unopened(path, exc, held) from exc
    except BaseException:
        # A refused store's directory as it was: what owner_only made beside it removed,
        # once SQLite's connection (whose close may write) no longer holds it.
        if db is not None:
            with contextlib.suppress(sqlite3.Error):  # the refusal is what is said
                db.close()
        drop_made(made)
        raise
    next_id: int = row[0] + 1
    if blank and next_id == 1:
        log.warning(
            "the job store %s was an empty file (0 bytes): it is a new store now, with no"
            " jobs; if it was to hold some (a copy cut short, a full disk), stop the server"
            " and put the store back (docs/operations.md, Backing up the job store)",
            path,
        )
    try:
        drop_empty_journal(path)
    except OSError as exc:  # an empty file beside the store: harmless, said for -v
        log.debug("the job store %s: its empty journal stays: %s", path, exc)
    reserve.make()
    _checkpoint_within_reserve(db, path, reserve)
    return db, next_id


def _blank(path: str) -> bool:
    """Whether ``path`` is an empty file with no -wal of pages beside it: SQLite opens it as
    a new store, and whatever it was to hold is gone without a word (an operator's `cp` of a
    backup cut short by a full disk)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0 and not may_hold_jobs(path + "-wal")


def _unopened(path: str, exc: Exception, held: bool) -> StoreError:
    """The store at ``path`` could not be opened: an open of the OS or SQLite failed. Where a
    store file was there (``held``: it may hold queued jobs), StoreUnopenable, whose fix is
    the file's (its mode, an immutable attribute, its owner): the hint of another path, or
    none, left its jobs behind at each restart (a review's `chattr +i`)."""
    kind = StoreUnopenable if held else StoreError
    return kind(f"cannot open the job store {path}: {exc}")


def _refuse_unreadable(db: sqlite3.Connection, path: str) -> None:
    """StoreError for a file this farm cannot read as its store (storetables.not_farms): a
    newer farm's format, or tables of another program's. Both were read or altered before:
    a newer format's rows replayed as if understood, the other table given farm's columns,
    then refused with the advice to start empty. Asked again here, with the store's lock
    held: owner_only's look, before any change, does not see what a -wal holds."""
    why = not_farms(db, path)
    if why:
        raise StoreError(f"the job store {why}")


def _add_columns(db: sqlite3.Connection, reserve: DiskReserve) -> list[str]:
    """Add the columns a store of an older farm lacks (which reads it still), and name
    them: an upgrade changed the file with no word of it. On a full disk the reserve gives
    the few pages their room, as it does the deletes', else a farm upgraded there would not
    start; adds then wait until it is whole again."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    added = []
    for name, kind in _ADDED_COLUMNS.items():
        if name in columns:
            continue
        added.append(name)
        alter = f"ALTER TABLE jobs ADD COLUMN {name} {kind}"
        try:
            db.execute(alter)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL or not (
                reserve.make() and reserve.release()
            ):
                raise
            try:
                db.execute(alter)
            except sqlite3.Error:
                reserve.close()  # the server does not start: its descriptor too
                raise
    return added


#: The rows of gearmand's queue that farm takes over (the rest stay where they are).
_MOVED = (
    "function_name IS NOT NULL"
    f" AND substr(CAST(function_name AS BLOB), 1, {len(RESERVED)})"
    f" != CAST('{RESERVED_PREFIX}' AS BLOB)"
)


def _take_over_gearmand(db: sqlite3.Connection, path: str) -> None:
    """Move the jobs gearmand queued in this file (its libsqlite3 queue, in the table
    `gearman_queue` or --libsqlite3-table's) into farm's, in gearmand's order. farm starts on
    gearmand's command line (--libsqlite3-db is --store), and kept its own table beside
    gearmand's: a host switched from gearmand to farm had every queued job stranded there,
    and nothing said so. Moved, not copied (a copy would be queued again at every start),
    in the caller's transaction. Over TCP, as gearmand has no other side: a TCP client's
    submit of the same unique joins one, as it would have there."""
    tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'jobs'")
    for (table,) in tables.fetchall():
        quoted = '"' + table.replace('"', '""') + '"'
        columns = {r[1] for r in db.execute(f"PRAGMA table_info({quoted})")}
        if not columns >= GEARMAND_COLUMNS:
            continue
        when = "COALESCE(when_to_run, 0)" if "when_to_run" in columns else "0"
        # farm.* are the Executor's signed calls, which no TCP peer may submit: never moved.
        # A table of that shape that farm cannot read (no rowid, say) is left as it is, with
        # a warning, rather than keeping the server from starting.
        db.execute("SAVEPOINT takeover")
        try:
            moved = db.execute(
                "INSERT INTO jobs (function, uniq, data, priority, run_at, local)"
                " SELECT CAST(function_name AS BLOB), CAST(COALESCE(unique_key, '') AS BLOB),"
                " CAST(COALESCE(data, x'') AS BLOB), MIN(MAX(COALESCE(priority, 1), 0), 2),"
                f" {when}, 0 FROM {quoted} WHERE {_MOVED} ORDER BY rowid"
            ).rowcount
            db.execute(f"DELETE FROM {quoted} WHERE {_MOVED}")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK TO takeover")
            log.warning(
                "left the table %s in %s as it is (not gearmand's queue?): %s", table, path, exc
            )
            continue
        finally:
            db.execute("RELEASE takeover")
        if moved > 0:
            log.warning(
                "took over %d jobs that gearmand queued in %s (its table %s)", moved, path, table
            )


def _checkpoint_within_reserve(db: sqlite3.Connection, path: str, reserve: DiskReserve) -> None:
    """Checkpoint the WAL before it holds half the reserve. Pages that live only in the
    WAL need the database file to grow before a checkpoint can reset the WAL, and on a
    full disk with more of them than the reserve holds every delete grew the WAL until
    none fit: SQLite's 1000 pages (4 MB) are an eighth of a 32 MB disk, twelve times its
    reserve, and 16 of 150 deletes were written there. SQLite's own fits 8 MB."""
    try:
        page: int = db.execute("PRAGMA page_size").fetchone()[0]
        pages = reserve.size // page // 2
        if 0 < pages < 1000:
            db.execute(f"PRAGMA wal_autocheckpoint = {max(pages, 8)}")
    except sqlite3.Error as exc:  # best effort, as the reserve itself
        log.debug("the job store %s keeps SQLite's checkpoints: %s", path, exc)


def _warn_if_others_control(path: str) -> None:
    """A WARNING where another user may delete or move the store aside (a directory of
    theirs on the way, or one others may write that is not sticky): its queued jobs would go
    with it while the server is down. The default state directory is never such a one
    (farm.paths passes it over); a path the operator named is used, as it was chosen."""
    if (why := controlled_by_another(Path(path), in_sticky="assume")) is not None:
        log.warning(
            "the job store %s %s: another user may delete or replace it, and its queued jobs"
            " with it; choose a directory only this user may write ([server] store, --store)",
            path,
            why,
        )
