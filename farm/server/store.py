"""Durable store for background jobs: embedded SQLite, group-committed.

Every background job is staged here before its JOB_CREATED is queued. The
loop ``take``s the stage as a ``Batch``, the server's writer thread ``write``s
it (farm.server.storewriter: the stage is the loop's, the database the
writer's), and the loop ``settle``s its outcome, releasing the JOB_CREATEDs held
for it only then, so a client never holds a handle for a job that is not on
disk. Rows are deleted when their job ends. WAL mode with synchronous=NORMAL
survives the server process being killed at any point (the OS has the
bytes); ``--store-sync full`` also survives power loss, at the cost of an
fsync per commit.

On start the server replays the rows in priority and arrival order, with
new handles but the same uniques, epoch times, submit times and counts of worker deaths;
a row whose checksum fails (its bytes changed on disk) is set aside, not run
(farm.server.storecheck).
Opening the database (its pragmas and schema) is farm.server.storeopen's.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from farm.server.reserve import DiskReserve, checkpoint_fits, disk_full, shrink, write_or_shrink
from farm.server.settings import NO_STORE
from farm.server.storeagain import make_again
from farm.server.storecheck import ASIDE_TABLE, kept_aside, read_rows, set_aside, split_damaged

# Re-exported: the server and the tests name the store's errors by this module.
from farm.server.storefile import DamagedStore as DamagedStore
from farm.server.storefile import OpenFile, unreadable, unwritten
from farm.server.storefile import StoreError as StoreError
from farm.server.storefile import StoreInUse as StoreInUse
from farm.server.storefile import StoreUnopenable as StoreUnopenable
from farm.server.storefile import StoreUnreadable as StoreUnreadable
from farm.server.storeopen import open_database
from farm.server.storesql import Row, write_rows

log = logging.getLogger("farm.server")

#: Seconds a failing store refuses background jobs before the next write tries again; and
#: how long the deletes of finished jobs wait after a write of theirs failed too (while
#: they can be written they are, each turn: a kill in a second's wait ran them all again).
RETRY_AFTER = 1.0
#: Seconds the deletes of finished jobs are gathered while the store fails: each write on a
#: full disk spends a few pages of the reserve's room however few deletes it holds, and a
#: kill runs at most these again (a second's worth ran 3018 finished jobs again).
DELETES_EVERY = 0.05


@dataclass(frozen=True, slots=True)
class StoredJob:
    id: int
    function: bytes
    unique: bytes
    data: bytes
    priority: int
    reducer: bytes | None
    when: float
    created: float = 0.0  # wall-clock time of the submit (0: a row of an older farm)
    retries: int = 0  # deaths of its workers so far (job_retries), kept across restarts
    # Submitted on the Unix socket: 1 or 0 as SQLite gives it (an older farm's rows: 1)
    local: int = 1


@dataclass(slots=True)
class Batch:
    """One commit's worth of the stage (``SQLiteStore.take``), and how its write went."""

    adds: list[Row]
    deletes: list[tuple[int]]
    retries: dict[int, int]
    handles: list[bytes]  # the submits its adds answer, in order
    below: int  # once it is settled, every row under this id is written or refused
    attempt: bool  # False: the store is failing, its adds refused before retry_after
    recovering: bool  # the store was failing when it was taken
    hold: bool = False  # its deletes kept untried: not due yet (SQLiteStore.due)
    error: str | None = None  # why its write failed
    deleted: bool = False  # its deletes and retries written alone when the adds failed
    seconds: float = 0.0  # how long its write took
    # An empty batch that only looks at the path (``take_look``): the hub's tick while the
    # store holds jobs; ``holds``: whether it still does, read by the look.
    look: bool = False
    holds: bool = True


class SQLiteStore:
    """Background jobs on disk, written in batches."""

    def __init__(
        self, path: str | Path, *, sync: str = "normal", retry_after: float = RETRY_AFTER
    ) -> None:
        self.path = str(path)
        self.broken: str | None = None  # why the last write failed; None while writes work
        self.retry_after = retry_after
        self._retry_at = 0.0  # adds are refused until then while the store fails
        self._deletes_at = 0.0  # deletes are held until then while the store fails
        self._gather = min(DELETES_EVERY, retry_after)
        self._adds: list[Row] = []
        self._deletes: list[tuple[int]] = []
        self._retries: dict[int, int] = {}  # row id: its job's count of worker deaths
        self.staged_handles: list[bytes] = []
        self.reserve = DiskReserve(self.path)  # made once the store is ours
        self.sync = sync
        self.db, self._next_id = open_database(self.path, sync, self.reserve)
        self._file = OpenFile(self.path)  # to see it deleted or replaced under the server

    @property
    def pending(self) -> bool:
        return bool(self._adds or self._deletes or self._retries)

    @property
    def due(self) -> bool:
        """Whether a commit is owed now: adds, deletes and counts of retries; on a failing
        store those DELETES_EVERY after the last were written, ``retry_after`` after
        their write failed."""
        if self._adds:
            return True
        return self.pending and not (self.broken and time.monotonic() < self._deletes_at)

    @property
    def retry_in(self) -> float:
        """Seconds until what a failing store holds back is due (``due``)."""
        return max(0.0, self._deletes_at - time.monotonic())

    def add(
        self,
        handle: bytes,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int,
        reducer: bytes | None,
        when: float,
        local: bool,
    ) -> int:
        """Stage one job for the next commit; its row id (``local``: submitted on the Unix
        socket, which a unique key's coalescing keeps apart, farm.server.jobs). Refused
        (StoreError) while the store is failing; after ``retry_after`` seconds the next
        commit tries again."""
        if self.broken and time.monotonic() < self._retry_at:
            raise StoreError(self.broken)
        row_id = self._next_id
        self._next_id += 1
        self._adds.append(
            (row_id, function, unique, data, priority, reducer, when, time.time(), local)
        )
        self.staged_handles.append(handle)
        return row_id

    def remove(self, row_id: int) -> None:
        self._deletes.append((row_id,))

    def retried(self, row_id: int, retries: int) -> None:
        """Stage a job's count of worker deaths, so a restart does not start it over."""
        self._retries[row_id] = retries

    def commit(self) -> list[bytes]:
        """Write the stage in one transaction; the handles whose add failed (empty on success).
        The three steps the server's writer thread splits: ``take``, ``write``, ``settle``."""
        batch = self.take()
        self.write(batch)
        return self.settle(batch)

    def take(self) -> Batch:
        """The stage, to be written as one batch; staging starts over (the loop's thread)."""
        batch = Batch(
            self._adds,
            self._deletes,
            self._retries,
            self.staged_handles,
            below=self._next_id,
            attempt=not (self.broken and time.monotonic() < self._retry_at),
            recovering=self.broken is not None,
            hold=bool(self.broken) and time.monotonic() < self._deletes_at,
        )
        # Each a new one, the counts' too: the batch is the writer thread's from here on, and
        # a dict it shared with the stage would change under it when a worker died.
        self._adds, self._deletes, self.staged_handles, self._retries = [], [], [], {}
        return batch

    def take_look(self) -> Batch:
        """An empty batch that only looks at the path when written (``look``), for an idle
        server: a store deleted with no commit after it was lost to a kill -9."""
        assert not self.pending, "a commit looks anyway; one at a time"
        batch = self.take()
        batch.look = True
        return batch

    def write(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction, its outcome into it. It touches only the
        database and the reserve, never the stage, so it may run in a thread of its own
        while the loop stages the next batch (farm.server.storewriter)."""
        if batch.look:
            try:
                self._look()
            except sqlite3.Error as exc:
                batch.error = str(exc)
            try:  # one row's worth: the tick stops once the store holds no job
                batch.holds = self.db.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None
            except sqlite3.Error:
                pass  # not known: looked at again
            return
        if not batch.attempt:
            # Failing: the adds refused before retry_after, but the deletes tried (they need
            # little room and free some), gathered for DELETES_EVERY; held for retry_after
            # if they fail too.
            if not batch.hold and (batch.deletes or batch.retries):
                batch.deleted = self._delete_anyway(batch.deletes, batch.retries)
            return
        began = time.perf_counter()
        try:
            self._look()
            if self.reserve.spent and not self.reserve.make() and not shrink(self.db, self.reserve):
                # The reserve's room is the deletes': an add that fit in it would leave the
                # next deletes none, and the jobs they end would run again after a restart.
                # Not only while broken: a store reopened with its reserve given back.
                raise sqlite3.OperationalError("disk full (its reserve is spent on deletes)")
            rows = batch.adds, batch.retries, batch.deletes
            write_or_shrink(self.db, self.reserve, batch.adds, lambda: self._write(*rows))
        except sqlite3.Error as exc:
            batch.error = unwritten(self.path, exc)
            # The adds are refused, but a finished job's delete must not be lost, or the job
            # runs again after a restart: alone it may fit, else it waits for the next commit.
            # So do the counts of retries, which take the same few pages.
            if batch.deletes or batch.retries:
                batch.deleted = self._delete_anyway(batch.deletes, batch.retries)
        else:
            if batch.recovering:
                self.reserve.make()
        finally:
            batch.seconds = time.perf_counter() - began

    def _look(self) -> None:
        """Whether the path still names the open file: made again there where it was deleted
        (farm.server.storeagain), raised as the store's failure where it cannot be."""
        if gone := self._file.gone():
            self._make_again(gone)

    def _make_again(self, gone: str) -> None:
        """A store deleted under the server made again at its path, with the jobs the open
        file holds (farm.server.storeagain); raised as the store's failure otherwise."""
        if gone == "deleted":
            try:
                self.db = make_again(self.db, self.path, self.sync, self.reserve)
                self._file = OpenFile(self.path)
                return
            except (sqlite3.Error, OSError, StoreError) as exc:
                # Tried at each retry: said once (the loop's flag, read here, may lag a batch).
                said = log.debug if self.broken else log.error
                said("the job store %s could not be made again: %s", self.path, exc)
        raise sqlite3.OperationalError(OpenFile.why(gone))

    def settle(self, batch: Batch) -> list[bytes]:
        """Take in ``batch``'s outcome (the loop's thread): the handles whose add failed."""
        if batch.deleted:  # written alone: the store fails, so the next are gathered a while
            self._deletes_at = time.monotonic() + self._gather
        if batch.look:  # nothing written: a failure only, said as a commit's
            if batch.error is not None:
                self._fails(batch.error)
            return []
        if not batch.attempt:
            if not batch.deleted:
                self._hold(batch.deletes, batch.retries)  # kept: see write()
            return batch.handles
        if batch.error is not None:
            self._fails(batch.error)
            if not batch.deleted:
                self._hold(batch.deletes, batch.retries)
            return batch.handles
        if self.broken:
            log.warning("the job store %s can be written again", self.path)
            self.broken = None
        return []

    def _fails(self, error: str) -> None:
        """A write (or a look) failed: said once, adds refused for ``retry_after``."""
        if not self.broken:
            log.error(
                "the job store %s cannot be written: %s; refusing background jobs while it fails",
                self.path,
                error,
            )
        self.broken = f"the job store {self.path} cannot be written: {error}"
        self._retry_at = time.monotonic() + self.retry_after

    def _hold(self, deletes: list[tuple[int]], retries: dict[int, int]) -> None:
        """Keep what could not be written for the next commit (before what came since), which
        waits ``retry_after``: a write that failed is not tried again each loop turn."""
        if deletes or retries:
            self._deletes_at = time.monotonic() + self.retry_after
        self._deletes = deletes + self._deletes
        self._retries = retries | self._retries

    def _delete_anyway(self, deletes: list[tuple[int]], retries: dict[int, int]) -> bool:
        """Write deletes alone while adds fail; on a full disk, with the reserve's room."""
        try:
            self._write([], retries, deletes)
        except sqlite3.Error as exc:
            # Only a full disk gives the reserve back: a store made read-only, immutable or
            # failing its I/O is no want of room, and its reserve is kept for when one is.
            if not disk_full(exc):
                log.debug("the job store %s: deletes not written: %s", self.path, exc)
                return False
            if not self.reserve.release():
                return False
            try:
                self._write([], retries, deletes)
            except sqlite3.Error:
                return False
        # Said for tests and -v: while the store fails, each commit's deletes.
        log.info("the job store %s: %d finished jobs deleted", self.path, len(deletes))
        # Copy the WAL into the database and cut it: the next deletes need room too. Only
        # when the database file has room to take it: pages that live only in the WAL (a
        # store below the auto-checkpoint's 4 MB) make it grow, and a checkpoint that fails
        # half-way keeps the WAL and has spent the reserve's room, so no later delete fits.
        try:
            if checkpoint_fits(self.db, self.path):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OSError):
            pass
        return True

    def _write(self, adds: list[Row], retries: dict[int, int], deletes: list[tuple[int]]) -> None:
        write_rows(self.db, adds, retries, deletes)

    def load(self) -> Iterator[StoredJob]:
        """Every stored job, in the order it must run: priority, then arrival. A row that
        fails its checksum is not among them: it is set aside (farm.server.storecheck)."""
        # Every TEXT read as its bytes: one flipped bit in a row's header makes a BLOB (or a
        # number) TEXT, and decoding it raised for the whole store ("Could not decode to
        # UTF-8"), which was refused; as bytes, the row is checked as any other (a BLOB read
        # as TEXT keeps its bytes and passes). Only for this read: the connection's other
        # queries (storeopen's PRAGMAs, sqlite_master) expect str.
        try:
            rows = read_rows(self.db)  # in id order: no sort in a temporary file (read_rows)
        except sqlite3.Error as exc:
            raise unreadable(self.path, exc) from None
        # Outside the try: damaged_jobs unreadable alone must not refuse the jobs (kept_aside).
        before = kept_aside(self.db, self.path)
        if before:  # said at each start until the operator empties the table
            log.warning(
                "the job store %s keeps %d job%s aside that failed %s checksum (not run) in"
                " its table %s (docs/operations.md, When things go wrong)",
                self.path,
                before,
                "" if before == 1 else "s",
                "its" if before == 1 else "their",
                ASIDE_TABLE,
            )
        rows, damaged_rows = split_damaged(rows)
        if damaged_rows:
            set_aside(self.db, self.path, damaged_rows)
        # In id order, as they were submitted: the queues run each priority's jobs first in,
        # first out, so the order they run in is the live server's, and so is their arrival
        # order (`farm jobs` lists oldest first; sorted by priority, a high job replayed
        # listed before the normal ones submitted earlier).
        for row in rows:
            yield StoredJob(*row[:10])

    def count(self) -> int:
        count: int = self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        return count

    def close(self) -> None:
        if self.pending:
            self._retry_at = self._deletes_at = 0.0  # the last chance for what is held: now
            self.commit()
            if self._deletes:
                log.error(
                    "%d finished jobs could not be deleted from the job store %s: they will"
                    " run again at the next start",
                    len(self._deletes),
                    self.path,
                )
        else:  # no commit looked: the stop must not lose the jobs
            try:
                self._look()
            except sqlite3.OperationalError as exc:
                log.error("the job store %s: %s", self.path, exc)
        self.reserve.close()
        self.db.close()


def memory_only(spec: str | None) -> bool:
    """Whether a store spec keeps jobs in memory only: NO_STORE alone (``none``); the flag
    and the config refuse '' and its other spellings (store_spec_problem)."""
    return spec == NO_STORE


def open_store(spec: str | None, *, sync: str = "normal") -> SQLiteStore | None:
    """``memory_only`` specs keep jobs in memory only; anything else is a SQLite file path."""
    if spec is None or memory_only(spec):
        return None
    return SQLiteStore(spec, sync=sync)
