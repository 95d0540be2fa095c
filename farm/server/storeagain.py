"""A store deleted under the running server, made again at its path from the file still open.

SQLite writes on into the file it holds open, so a store deleted while the server ran (an
``rm`` of the state directory's files, a cleanup) took every later job into a file no start
reads, and lost them all at the next stop (farm.server.storefile.OpenFile sees it now).
That open file still holds every job stored and not finished: they are read from it and
written into a new store at the path, so nothing acknowledged is lost. A path that names
another file (replaced) is not written over: that file is someone's, and the store fails.
Where the new file cannot be put at the path once the deleted one's connection is closed
(something put there meanwhile), it is opened where it is and the store fails, its jobs and
their deletes there, until a later look puts it in place (``NotInPlace``, ``put_in_place``).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from farm.server.reserve import DiskReserve
from farm.server.storecheck import ASIDE_TABLE, copy_aside, read_rows, split_damaged
from farm.server.storefile import OpenFile, StoreError
from farm.server.storeopen import open_database
from farm.server.storesql import write_rows

__all__ = ["AGAIN", "NotInPlace", "StorePath", "make_again", "put_in_place"]

log = logging.getLogger("farm.server")

#: The name the store made again is written under, beside the store, before its rename.
AGAIN = "-again"


@dataclass(frozen=True, slots=True)
class NotInPlace:
    """The store made again, which cannot be put at its path or opened there: its jobs are
    in ``where`` (its name of its own, or the path itself), ``db`` open on it (None where it
    cannot be), put in place by a later look (``put_in_place``); ``why``: the store's
    failure meanwhile, naming ``where``."""

    where: str
    identity: tuple[int, int] | None  # the file's, so that one moved to the path is known
    db: sqlite3.Connection | None
    why: str


def _not_in_place(
    path: str, where: str, db: sqlite3.Connection | None, why: BaseException
) -> NotInPlace:
    try:
        found = os.stat(where)
        identity: tuple[int, int] | None = (found.st_dev, found.st_ino)
    except OSError:
        identity = None
    if where == path:
        then = "which a start reads"
    else:
        then = f"which no start reads: move it to {path} if the server stops first"
    return NotInPlace(
        where,
        identity,
        db,
        f"the store made again after it was deleted cannot be put in place ({why}); its"
        f" jobs are in {where} meanwhile, {then}; tried again at each look",
    )


class StorePath:
    """The store's path, looked at by each commit (``look``): whether it still names the
    file SQLite holds open; the store made again there where it was deleted, and put in
    place by a later look where it could not be at once (``NotInPlace``)."""

    def __init__(self, path: str, sync: str, reserve: DiskReserve) -> None:
        self.path = path
        self.sync = sync
        self.reserve = reserve
        self._file = OpenFile(path)
        self._aside: NotInPlace | None = None  # the store made again, not at the path yet

    def look(
        self, db: sqlite3.Connection, *, failing: bool
    ) -> tuple[sqlite3.Connection, str | None]:
        """The connection to write with from now on (``db``, or the store's made again),
        and why the store fails, if it does: said in the log once (``failing``: it was)."""
        said = log.debug if failing else log.error
        if self._aside is not None:
            made = put_in_place(
                db, self.path, self._aside.where, self._aside.identity, self.sync, self.reserve
            )
            if not isinstance(made, NotInPlace):
                log.warning("the job store made again is at its path %s now", self.path)
        elif (gone := self._file.gone()) == "deleted":
            try:
                made = make_again(db, self.path, self.sync, self.reserve)
            except (sqlite3.Error, OSError, StoreError) as exc:
                said("the job store %s could not be made again: %s", self.path, exc)
                return db, OpenFile.why(gone)  # db open as it was: tried again
        elif gone is not None:
            return db, OpenFile.why(gone)
        else:
            return db, None
        if isinstance(made, NotInPlace):
            # Its jobs, and the deletes of those that finish, where the file made is; said
            # as the store's failure, naming that file, until a later look puts it in place.
            self._aside = made
            said("the job store %s: %s", self.path, made.why)
            return made.db or db, made.why
        self._aside = None
        self._file = OpenFile(self.path)
        return made, None


def make_again(
    db: sqlite3.Connection, path: str, sync: str, reserve: DiskReserve
) -> sqlite3.Connection | NotInPlace:
    """A new store at ``path`` holding ``db``'s jobs, ``db`` closed. Raises (sqlite3.Error,
    OSError, farm.server.storefile.StoreError) where it cannot be made, ``db`` left open as
    it was (the new store written first under a name of its own); NotInPlace where that file
    cannot be put at the path or opened there, once ``db`` is closed."""
    rows, damaged = split_damaged(read_rows(db, "id"))  # as load() reads them
    # Written whole under another name, then renamed: SQLite removes a WAL by its name when
    # it closes, and the deleted store's would take the new one's with it.
    making = path + AGAIN
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
    again = put_in_place(db, path, making, None, sync, reserve)
    if isinstance(again, NotInPlace):
        return again
    log.error(
        "the job store %s was deleted while the server runs: made again there with the %d"
        " jobs it held%s",
        path,
        len(rows),
        f" ({kept} that failed their checksum kept in its table {ASIDE_TABLE})" if kept else "",
    )
    return again


def put_in_place(
    db: sqlite3.Connection,
    path: str,
    where: str,
    identity: tuple[int, int] | None,
    sync: str,
    reserve: DiskReserve,
) -> sqlite3.Connection | NotInPlace:
    """The store made again, in ``where`` (``db`` open on it, or closed), renamed to
    ``path`` and opened there; NotInPlace where it cannot be, the file opened again where it
    is: the jobs are written nowhere else meanwhile (the deletes of those that finish too),
    and the next look tries again from there. ``identity``: the file's, where it was seen
    before, so that one moved to the path by hand is taken as it is."""
    db.close()  # its WAL copied in and removed by its name: the file alone holds it all
    if where != path:
        try:
            found = os.lstat(path) if os.path.lexists(path) else None
            if found is not None and (found.st_dev, found.st_ino) != identity:
                # Someone's, put there since: not written over (a directory, a restore).
                raise FileExistsError(errno.EEXIST, "another file is at the path", path)
            if found is None:
                # What the deleted store left by its name (its WAL, where its close could
                # not remove it: SQLite would replay those pages into the new file).
                _remove(path, sides_only=True)
                reserve.close()  # deleted too, perhaps: made again beside the new store
                os.rename(where, path)
        except OSError as exc:
            return _not_in_place(path, where, _reopen(where, sync, reserve), exc)
    try:
        return open_database(path, sync, reserve)[0]
    except (sqlite3.Error, OSError, StoreError) as exc:
        return _not_in_place(path, path, None, exc)


def _reopen(where: str, sync: str, reserve: DiskReserve) -> sqlite3.Connection | None:
    """The store made again opened at its own name, to write the deletes into meanwhile."""
    try:
        return open_database(where, sync, reserve)[0]
    except (sqlite3.Error, OSError, StoreError) as exc:
        log.debug("the job store made again cannot be opened at %s: %s", where, exc)
        return None


def _remove(path: str, *, sides_only: bool = False) -> None:
    for suffix in ("-wal", "-journal", "-shm") if sides_only else ("-wal", "-journal", "-shm", ""):
        Path(path + suffix).unlink(missing_ok=True)
