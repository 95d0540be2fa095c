"""A store deleted under the running server, made again at its path from the file still open.

SQLite writes on into the file it holds open, so a store deleted while the server ran (an
``rm`` of the state directory's files, a cleanup) took every later job into a file no start
reads, and lost them all at the next stop (farm.server.storefile.OpenFile sees it now).
That open file still holds every job stored and not finished: they are read from it and
written into a new store at the path, so nothing acknowledged is lost. A path that names
another file (replaced) is not written over: that file is someone's, and the store fails.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from farm.server.reserve import DiskReserve
from farm.server.storecheck import ASIDE_TABLE, copy_aside, read_rows, split_damaged
from farm.server.storeopen import open_database
from farm.server.storesql import write_rows

__all__ = ["make_again"]

log = logging.getLogger("farm.server")


def make_again(
    db: sqlite3.Connection, path: str, sync: str, reserve: DiskReserve
) -> sqlite3.Connection:
    """A new store at ``path`` holding ``db``'s jobs, ``db`` closed. Raises (sqlite3.Error,
    OSError, farm.server.storefile.StoreError) where it cannot be made: before ``db`` is
    closed, it stays open as it was (the new store written first under a name of its own);
    after, the new file at the path holds the jobs for the next start."""
    rows, damaged = split_damaged(read_rows(db))  # as load() reads them
    # Written whole under another name, then renamed: SQLite removes a WAL by its name when
    # it closes, and the deleted store's would take the new one's with it.
    making = path + "-again"
    _remove(making)
    aside = DiskReserve(making)  # open_database makes one: not the store's, removed below
    try:
        new, _ = open_database(making, sync, aside)
        try:
            # The same ids: the jobs in memory delete their rows by them.
            adds = [(*row[:8], row[9]) for row in rows]
            write_rows(new, adds, {row[0]: row[8] for row in rows if row[8]}, [])
            # The rows kept aside for the operator, never run nor deleted, kept there too
            # (dropped before, unsaid); with any that fail their checksum now.
            kept = copy_aside(db, new, damaged, path)
        finally:
            new.close()  # its WAL copied in and removed: the file alone holds it all
    except BaseException:
        _remove(making)
        raise
    finally:
        aside.close()
        Path(aside.path).unlink(missing_ok=True)
    db.close()
    # What the deleted store left by its name (its WAL, where its close could not remove
    # it: SQLite would replay those pages into the new file), all of it read above.
    _remove(path, sides_only=True)
    reserve.close()  # deleted too, perhaps: made again beside the new store
    Path(making).rename(path)
    again, _ = open_database(path, sync, reserve)
    log.error(
        "the job store %s was deleted while the server runs: made again there with the %d"
        " jobs it held%s",
        path,
        len(rows),
        f" ({kept} that failed their checksum kept in its table {ASIDE_TABLE})" if kept else "",
    )
    return again


def _remove(path: str, *, sides_only: bool = False) -> None:
    for suffix in ("-wal", "-journal", "-shm") if sides_only else ("-wal", "-journal", "-shm", ""):
        Path(path + suffix).unlink(missing_ok=True)
