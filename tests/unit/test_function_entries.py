"""The server's function entries (farm.server.functable): made when a name is first used,
freed once idle in their turn, and never kept by a submit the server refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm.server.jobs import MAX_IDLE_FUNCTIONS, JobServer, QueueFull
from farm.server.store import SQLiteStore, StoreError
from tests.helpers.fakes import FakePeer


def test_submits_refused_for_the_queued_bytes_keep_no_function_entry() -> None:
    # The entry was made before the limits were checked, and a refusal never made it idle:
    # each refused submit to a new name kept one for good (10,000 of them: 52 MB).
    jobs = JobServer(max_queued_bytes=2048, hostname="t")
    jobs.submit(None, b"filler", b"", b"z" * 1200, background=True)
    for i in range(MAX_IDLE_FUNCTIONS + 500):
        with pytest.raises(QueueFull):
            jobs.submit(None, b"fresh%d" % i, b"", b"x", background=True)
    assert len(jobs.functions) <= MAX_IDLE_FUNCTIONS + 1, len(jobs.functions)
    assert b"filler" in jobs.functions, "the function that holds a job is kept"


def test_submits_the_failing_store_refuses_keep_no_function_entry(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    store.broken, store._retry_at = "disk full", time.monotonic() + 3600  # as a failed commit
    for i in range(MAX_IDLE_FUNCTIONS + 500):
        with pytest.raises(StoreError):
            jobs.submit(None, b"fresh%d" % i, b"", b"x", background=True)
    assert len(jobs.functions) <= MAX_IDLE_FUNCTIONS, len(jobs.functions)


def test_a_refused_submit_leaves_a_function_in_use_as_it_was() -> None:
    jobs = JobServer(max_queued_bytes=2048, hostname="t")
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    jobs.submit(None, b"f", b"", b"z" * 1200, background=True)
    with pytest.raises(QueueFull):
        jobs.submit(None, b"f", b"", b"z" * 1200, background=True)
    assert jobs.functions[b"f"].queued == 1 and worker in jobs.functions[b"f"].workers
    assert b"f" not in jobs.idle


def test_room_for_a_new_function_frees_idle_entries_never_live_ones() -> None:
    # --max-functions counted the up to 1024 idle entries the server keeps: 50 calls that
    # timed out on 50 names nobody serves made `--max-functions 50` refuse every new name.
    jobs = JobServer(hostname="t")
    for i in range(3):  # calls that timed out: their clients closed, their jobs dropped
        client = FakePeer()
        jobs.submit(client, b"gone%d" % i, b"", b"x")
        jobs.detach_client(client)  # its queued foreground job is dropped: the name is idle
    jobs.submit(None, b"queued", b"", b"x", background=True)
    worker = FakePeer()
    jobs.can_do(worker, b"served")
    assert len(jobs.functions) == 5
    assert jobs.room_for_new(5), "an idle entry is freed for the new name"
    assert len(jobs.functions) == 4 and b"gone0" not in jobs.functions, "the oldest first"
    assert jobs.room_for_new(4) and set(jobs.functions) == {b"gone2", b"queued", b"served"}
    assert jobs.room_for_new(3) and set(jobs.functions) == {b"queued", b"served"}
    assert not jobs.room_for_new(2), "live entries count"
    assert set(jobs.functions) == {b"queued", b"served"}
