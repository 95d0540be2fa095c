"""A stored job's count of worker deaths outlives a restart, and older stores gain the column.

Found in a review: the count lived only in memory (gearmand keeps none either), so a poison
background job that kills its worker got ``job_retries`` more runs after every restart of
the server.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from farm.server.jobs import JobServer
from farm.server.store import SQLiteStore
from tests.helpers.fakes import FakeClock, FakePeer

#: The jobs table as farm made it before it kept submit times, and then before it kept retries.
BEFORE_CREATED = (
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT NULL,"
    " data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB, run_at REAL NOT NULL"
    " DEFAULT 0)"
)
BEFORE_RETRIES = BEFORE_CREATED[:-1] + ", created REAL NOT NULL DEFAULT 0)"


def died_holding(jobs: JobServer, function: bytes = b"f") -> None:
    """A worker grabs the next job of ``function`` and its connection drops."""
    worker = FakePeer()
    jobs.can_do(worker, function)
    assert jobs.grab(worker) is not None
    jobs.detach_worker(worker)


@pytest.mark.parametrize("schema", [BEFORE_CREATED, BEFORE_RETRIES], ids=["created", "retries"])
def test_a_store_of_an_older_farm_gains_the_column_and_keeps_counts(
    tmp_path: Path, schema: str
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(schema)
        old.execute(
            "INSERT INTO jobs (id, function, uniq, data, priority) VALUES (7, 'f', '', 'x', 1)"
        )
    old.close()
    store = SQLiteStore(path)
    (row,) = store.load()
    assert (row.id, row.retries) == (7, 0)  # no death counted before
    store.retried(7, 2)
    assert store.commit() == []
    store.close()
    again = SQLiteStore(path)
    try:
        assert [r.retries for r in again.load()] == [2]
    finally:
        again.close()


def test_an_older_farm_still_reads_and_writes_a_store_with_the_column(tmp_path: Path) -> None:
    # A farm rolled back to the version before runs the statements it always ran.
    path = tmp_path / "q.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as old:
        old.execute(
            "INSERT INTO jobs (id, function, uniq, data, priority, reducer, run_at, created)"
            " VALUES (1, 'f', '', 'x', 1, NULL, 0, 0)"
        )
        rows = old.execute(
            "SELECT id, function, uniq, data, priority, reducer, run_at, created FROM jobs"
        ).fetchall()
    old.close()
    assert len(rows) == 1


def test_the_count_survives_a_restart_and_a_poison_job_fails_on_time(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SQLiteStore(path)
    jobs = JobServer(store=store, hostname="t", job_retries=3)
    job = jobs.submit(None, b"f", b"poison", b"x", background=True)
    jobs.commit_store()
    died_holding(jobs)
    died_holding(jobs)
    assert job.retries == 2
    jobs.commit_store()
    store.close()  # the server restarts here

    store = SQLiteStore(path)
    jobs = JobServer(store=store, hostname="t", job_retries=3)
    assert jobs.replay() == 1
    (replayed,) = jobs.jobs.values()
    assert replayed.retries == 2, "the deaths before the restart were forgotten"
    died_holding(jobs)  # the third death: job_retries = 3 allows no other run
    assert not jobs.jobs and [p[2] for p in jobs.poison] == [b"poison"]
    jobs.commit_store()
    assert store.count() == 0
    store.close()


def test_a_supervised_server_counts_a_death_only_if_it_outlives_the_grace(
    tmp_path: Path,
) -> None:
    # The supervisor's death kills the workers too, and the server may read a worker's end
    # before it sees itself orphaned: such a death is not the job's, and must not be kept.
    store = SQLiteStore(tmp_path / "q.db")
    clock = FakeClock()
    jobs = JobServer(store=store, hostname="t", job_retries=5, call_later=clock.call_later)
    jobs.parent_pid = os.getppid()  # its supervisor, alive
    job = jobs.submit(None, b"f", b"", b"x", background=True)
    jobs.commit_store()
    died_holding(jobs)
    jobs.commit_store()
    assert [r.retries for r in store.load()] == [0]  # not yet: the grace first
    clock.advance(1.0)
    jobs.commit_store()
    assert [r.retries for r in store.load()] == [1]
    died_holding(jobs)  # read a moment before the server sees its supervisor gone
    assert job.retries == 2
    jobs.parent_pid = os.getppid() + 1  # orphaned: the death was its supervisor's doing
    clock.advance(2.0)
    jobs.commit_store()
    assert [r.retries for r in store.load()] == [1]
    store.close()


def test_a_batch_in_flight_shares_no_count_with_the_stage(tmp_path: Path) -> None:
    """Found in a review: ``take`` handed the writer thread the stage's own (empty) dict of
    counts, so a worker's death staged while the batch was written changed the batch under
    the writer: its UPDATE list could be read while the loop grew the dict ("dictionary
    changed size during iteration", not a sqlite3.Error: the transaction was left open,
    and the next commit failed, refusing its background jobs)."""
    store = SQLiteStore(tmp_path / "q.db")
    rows = [store.add(b"h%d" % i, b"f", b"", b"x", 1, None, 0.0, True) for i in range(3)]
    assert store.commit() == []
    batch = store.take()  # nothing staged: no counts
    store.retried(rows[0], 1)  # a worker died meanwhile: staged for the next batch
    assert batch.retries == {}, "the batch in flight changed under its writer"


def test_a_commit_that_fails_outside_sqlite_leaves_no_transaction_open(tmp_path: Path) -> None:
    """The writer thread takes any exception as a failed commit: its transaction must not
    stay open, or every later commit fails ("cannot start a transaction within a
    transaction") and background jobs are refused until a restart."""
    store = SQLiteStore(tmp_path / "q.db")
    row = store.add(b"h1", b"f", b"", b"x", 1, None, 0.0, True)
    assert store.commit() == []
    store.retried(row, 2)
    batch = store.take()
    batch.retries = BadCounts({row: 2})  # an exception of no sqlite3 kind, mid-transaction
    with pytest.raises(RuntimeError):
        store.write(batch)
    store.add(b"h2", b"f", b"", b"x", 1, None, 0.0, True)
    assert store.commit() == [], "a commit after the failure was refused"
    store.close()


class BadCounts(dict[int, int]):
    def items(self):  # type: ignore[no-untyped-def,override]
        raise RuntimeError("dictionary changed size during iteration")
