"""The job model with a SQLite store, without sockets: staging, commit, failure."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from farm.server.jobs import JobServer, Outcome
from farm.server.store import SQLiteStore, StoreError
from tests.helpers.fakes import FakePeer


def test_background_jobs_are_staged_and_committed_in_one_batch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    for i in range(3):
        jobs.submit(None, b"f", b"u%d" % i, b"x", background=True)
    assert store.pending and store.count() == 0
    assert jobs.commit_store() == []
    assert store.count() == 3


def test_foreground_jobs_never_touch_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    jobs.submit(FakePeer(), b"f", b"", b"x")
    assert not store.pending


def test_a_foreground_job_joined_by_a_background_submit_becomes_durable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    client = FakePeer()
    first = jobs.submit(client, b"f", b"k", b"x")
    same = jobs.submit(None, b"f", b"k", b"y", background=True)
    assert same is first and first.background and first.store_id
    jobs.commit_store()
    jobs.detach_client(client)  # the foreground client leaving must not cancel it
    assert first.handle in jobs.jobs
    assert store.count() == 1


def test_finished_jobs_are_deleted(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    jobs.submit(None, b"f", b"", b"x", background=True)
    jobs.commit_store()
    job = jobs.grab(worker)
    assert job is not None
    jobs.finish(worker, job, Outcome.COMPLETE, b"done")
    jobs.commit_store()
    assert store.count() == 0


def test_a_failed_commit_reports_its_jobs_and_refuses_new_ones(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    job = jobs.submit(None, b"f", b"", b"x", background=True)
    store.db.close()  # the disk is gone
    assert jobs.commit_store() == [job.handle]
    assert store.broken and "cannot be written" in store.broken
    assert job.handle not in jobs.jobs  # forgotten: nobody else waited on it
    assert jobs.functions[b"f"].queued == 0
    with pytest.raises(StoreError):
        jobs.submit(None, b"f", b"", b"y", background=True)
    # Foreground work goes on without the store.
    assert jobs.submit(FakePeer(), b"f", b"", b"z").handle in jobs.jobs


@pytest.mark.parametrize(("sync", "level"), [("normal", 1), ("full", 2)])
def test_store_sync_sets_sqlites_synchronous(tmp_path, sync: str, level: int) -> None:
    # --store-sync full / [server] store_sync = "full": an fsync per commit (power loss)
    store = SQLiteStore(tmp_path / "q.db", sync=sync)
    try:
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        store.close()


@pytest.mark.parametrize("under", ["afile", "afile/deeper"])
def test_a_file_where_the_stores_directory_goes_is_named(tmp_path: Path, under: str) -> None:
    # It read "[Errno 17] File exists: '.../afile'", which says nothing of what is wrong.
    (tmp_path / "afile").write_text("")
    with pytest.raises(StoreError) as info:
        SQLiteStore(tmp_path / under / "q.db")
    assert str(info.value).endswith("is not a directory"), info.value
    assert str(tmp_path / "afile") in str(info.value)


def test_a_fifo_at_the_store_path_is_named_as_what_it_is(tmp_path: Path) -> None:
    # It read "[Errno 29] Illegal seek", which says nothing of what is wrong.
    os.mkfifo(tmp_path / "q.db")
    with pytest.raises(StoreError, match=r"q\.db is not a regular file$"):
        SQLiteStore(tmp_path / "q.db")


def test_a_commit_writes_many_rows_a_statement(tmp_path: Path) -> None:
    # The writer thread waits for the GIL after each SQLite step, up to 5 ms while the loop
    # is busy: a statement a row (executemany) made a commit of a flood's batch take seconds.
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    for i in range(250):
        jobs.submit(None, b"f", b"u%d" % i, b"x", background=True)
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    assert jobs.commit_store() == []
    assert len(statements) <= 5, statements  # BEGIN, three INSERTs, COMMIT
    assert store.count() == 250
    for job in list(jobs.jobs.values()):
        assert jobs.cancel(job.handle)  # its row's delete staged
    statements.clear()
    assert jobs.commit_store() == []
    assert len(statements) <= 3, statements  # BEGIN, one DELETE, COMMIT
    assert store.count() == 0
    store.close()


def test_a_background_job_reaches_workers_only_once_committed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    now = jobs.submit(None, b"f", b"now", b"x", background=True)
    later = jobs.submit(None, b"f", b"later", b"x", background=True, when=time.time() + 3600)
    assert jobs.grab(worker) is None  # not on disk yet: were it run and then refused …
    assert jobs.functions[b"f"].queued == 2  # counted all the same (maxqueue, status)
    assert jobs.commit_store() == []
    assert jobs.grab(worker) is now
    assert [entry[2] for entry in jobs.epoch_heap] == [later]  # held for its time
    assert jobs.functions[b"f"].queued == 1 and not jobs.awaiting
    store.close()


def test_a_refused_job_that_a_foreground_client_joined_runs_for_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    job = jobs.submit(None, b"f", b"k", b"x", background=True)
    client = FakePeer()
    assert jobs.submit(client, b"f", b"k", b"x") is job  # joins it before the commit
    cancelled = jobs.submit(None, b"f", b"gone", b"x", background=True)
    assert jobs.cancel(cancelled.handle)  # cancelled while its row is written
    store.db.close()  # the commit fails
    assert jobs.commit_store() == [job.handle, cancelled.handle]
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    assert jobs.grab(worker) is job and not job.background and not job.store_id
    assert jobs.functions[b"f"].queued == 0 and not jobs.awaiting


def test_a_stored_row_that_coalesces_at_replay_is_deleted(tmp_path: Path) -> None:
    # Two rows of one unique key (a store written by another server, gearmand's among
    # them) replay as one job: the later row goes, or the job would run again at each
    # start after it had finished.
    store = SQLiteStore(tmp_path / "q.db")
    for data in (b"first", b"second"):
        store.add(b"H:t:1", b"f", b"k", data, 1, None, 0.0, True)
    store.commit()
    jobs = JobServer(store=store, hostname="t")
    assert jobs.replay() == 2 and len(jobs.jobs) == 1
    jobs.commit_store()
    assert store.count() == 1
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    job = jobs.grab(worker)
    assert job is not None and job.data == b"first"
    jobs.finish(worker, job, Outcome.COMPLETE)
    jobs.commit_store()
    assert store.count() == 0


def test_a_stored_job_due_soon_waits_for_its_time_once_committed(tmp_path: Path) -> None:
    # Queued when the store has it (JobControl.committed), not before its epoch time: else a
    # job due in a minute would run at once (a second, as first written, races a slow host).
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    job = jobs.submit(None, b"f", b"", b"x", background=True, when=time.time() + 60)
    jobs.commit_store()
    assert not job.queued and jobs.grab(worker) is None
    assert [entry[2] for entry in jobs.epoch_heap] == [job]
