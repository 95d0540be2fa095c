"""A full store refuses background jobs only while it is full, and loses no delete.

Found in an adversarial run: with the disk full the server rightly refused new
background jobs, but kept refusing after space was freed, and the deletes of
jobs that finished meanwhile were lost, so 127 finished jobs ran again after a
restart. The store is filled here with SQLite's own limit (PRAGMA
max_page_count), which needs no special mount.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from farm.server.jobs import JobServer, Outcome
from farm.server.reserve import RESERVE_BYTES
from farm.server.store import SQLiteStore, StoreError
from tests.helpers import ROOT
from tests.helpers.disks import small_tmpfs
from tests.helpers.fakes import FakePeer
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, wait_connectable
from tests.helpers.waiting import wait_for

BIG = b"x" * 20_000


def fill(store: SQLiteStore, jobs: JobServer) -> list[bytes]:
    """Submit big background jobs until a commit fails; the handles that were refused."""
    for _ in range(1000):
        jobs.submit(None, b"f", b"", BIG, background=True)
        failed = jobs.commit_store()  # the refused jobs forgotten
        if failed:
            return failed
    raise AssertionError("the store never filled up")


def test_a_full_store_recovers_and_keeps_the_deletes_of_finished_jobs(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SQLiteStore(path, retry_after=0.0)
    jobs = JobServer(store=store, hostname="t")
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 40}")
    assert fill(store, jobs) and store.broken
    stored = store.count()
    assert stored > 0
    # While it is full, workers finish stored jobs: their deletes must reach the disk.
    finished = []
    for _ in range(3):
        job = jobs.grab(worker)
        assert job is not None and job.store_id
        jobs.finish(worker, job, Outcome.COMPLETE, b"done")
        finished.append(job.store_id)
    jobs.commit_store()
    assert store.count() == stored - 3, "the deletes were written although adds cannot be"
    # Space comes back: background jobs are accepted again, without a restart.
    store.db.execute("PRAGMA max_page_count = 1000000")
    job = jobs.submit(None, b"f", b"", b"small", background=True)
    assert jobs.commit_store() == [] and store.broken is None
    store.close()
    again = SQLiteStore(path)
    ids = {row.id for row in again.load()}
    assert job.store_id in ids and not ids & set(finished), "no finished job comes back"
    again.close()


def test_a_failing_store_refuses_until_its_retry_is_due(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db", retry_after=3600.0)
    jobs = JobServer(store=store, hostname="t")
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 5}")
    fill(store, jobs)
    with pytest.raises(StoreError, match="cannot be written"):
        jobs.submit(None, b"f", b"", b"y", background=True)
    store.close()


def test_a_damaged_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SQLiteStore(path)
    jobs = JobServer(store=store, hostname="t")
    for _ in range(200):
        jobs.submit(None, b"f", b"", b"x" * 3000, background=True)
    jobs.commit_store()
    store.close()
    damaged = bytearray(path.read_bytes())
    damaged[5000:9000] = b"\xff" * 4000  # pages of the jobs table
    path.write_bytes(bytes(damaged))
    result = subprocess.run(
        [sys.executable, "-m", "farm.server", "-p", str(free_port()), "--store", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"farm server: the job store {path} cannot be read"), line


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MB tmpfs: a full disk fills the WAL too, which max_page_count does not."""
    with small_tmpfs(tmp_path / "small", "32m") as disk:
        yield disk


def _fill_disk(disk: Path, leave: int) -> None:
    info = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (info.f_bavail * info.f_frsize - leave))


@pytest.mark.parametrize("retry_after", [0.0, 3600.0])
def test_on_a_full_disk_the_deletes_of_finished_jobs_reach_it(
    small_disk: Path, retry_after: float
) -> None:
    # The store's WAL took the last of the disk: a delete needs WAL room too, so every job
    # that finished then ran again after a restart (all 72 in a review). The reserve kept
    # beside the store is given back for them. With a long retry_after the deletes wait
    # in memory, and close() must still write them.
    path = small_disk / "q.db"
    store = SQLiteStore(path, retry_after=retry_after)
    disk = os.statvfs(small_disk)
    expected = min(RESERVE_BYTES, disk.f_blocks * disk.f_frsize // 100)  # 1% of a small disk
    assert (small_disk / "q.db-reserve").stat().st_size == expected
    _fill_disk(small_disk, leave=2 << 20)
    ids = []
    while not store.commit():
        ids.append(store.add(b"H:%d" % len(ids), b"f", b"", BIG, 1, None, 0.0, True))
    assert store.broken and len(ids) > 10
    ids.pop()  # the add that failed
    for row_id in ids:
        store.remove(row_id)
    store.commit()
    store.close()
    again = SQLiteStore(path)
    try:
        assert again.count() == 0, "finished jobs would run again"
    finally:
        again.close()


def test_a_link_at_the_reserve_is_never_followed(tmp_path: Path) -> None:
    # Anyone who may write in the store's directory could point STORE-reserve at a file of
    # the server's user, which a full disk would then have truncated.
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n" * 1000)
    (tmp_path / "q.db-reserve").symlink_to(victim)
    store = SQLiteStore(tmp_path / "q.db")
    try:
        assert not store.reserve.release(), "no reserve is held through a link"
    finally:
        store.close()
    assert victim.read_text() == "precious\n" * 1000


@pytest.mark.parametrize(
    ("retry_after", "count", "size"), [(0.0, 8, 200_000), (3600.0, 80, 20_000)]
)
def test_deletes_one_turn_at_a_time_on_a_full_disk_all_reach_it(
    small_disk: Path, retry_after: float, count: int, size: int
) -> None:
    # A review's run: 30 background jobs (1.7 MB, all still in the WAL) and a disk another
    # file filled; the jobs finished one per loop turn, and 29 of them ran again after a
    # restart. The first delete was written with the reserve's room, but the checkpoint
    # after it copied the WAL into the database file, which had to grow by all of it:
    # that failed half-way and took the reserve's room with it, so no later delete fit.
    # Each delete written alone takes a few pages of WAL, so the reserve (1% of this disk)
    # holds a few dozen of them (retry_after 0); held back a while, they go in one write.
    path = small_disk / "q.db"
    store = SQLiteStore(path, retry_after=retry_after)
    # Pages only in the WAL: the store checkpoints within its reserve, but a checkpoint the
    # disk had no room for leaves them there all the same.
    store.db.execute("PRAGMA wal_autocheckpoint = 0")
    ids = [store.add(b"H:%d" % i, b"f", b"", b"x" * size, 1, None, 0.0, True) for i in range(count)]
    assert store.commit() == []
    assert os.path.getsize(path) < count * size  # in the WAL yet
    _fill_disk(small_disk, leave=0)
    for row_id in ids:  # a worker's WORK_COMPLETE per turn
        store.remove(row_id)
        store.commit()
    store.close()
    again = SQLiteStore(path)
    try:
        assert again.count() == 0, "finished jobs would run again"
    finally:
        again.close()


def test_an_idle_server_writes_the_deletes_it_held_before_it_is_killed(
    small_disk: Path, tmp_path: Path
) -> None:
    # A review's run: jobs finished while the disk was full, their deletes were held for
    # the store's retry a second later, but that retry came only with the next packet. The
    # server went idle and was killed: every one of them ran again after the restart.
    db = small_disk / "q.db"
    log = tmp_path / "server.log"
    port = free_port()
    cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", str(db)]
    srv = subprocess.Popen(cmd + ["-v", "-l", str(log)], cwd=ROOT)
    try:
        addr = f"127.0.0.1:{port}"
        wait_connectable(addr, srv)
        client = Peer(addr)
        for i in range(20):
            client.send(T.SUBMIT_JOB_BG, "f", f"u{i}", b"x" * 50_000)
            assert client.recv().type == T.JOB_CREATED
        _fill_disk(small_disk, leave=0)
        # A submit the full disk refuses: the store fails, and holds the deletes that come
        # within the next second for its retry.
        client.send(T.SUBMIT_JOB_BG, "f", "big", b"x" * 1_000_000)
        assert client.recv().type != T.JOB_CREATED
        worker = Peer(addr)
        worker.send(T.CAN_DO, "f")
        for _ in range(20):
            worker.send(T.GRAB_JOB)
            job = worker.recv()
            assert job.type == T.JOB_ASSIGN
            worker.send(T.WORK_COMPLETE, job.args[0], b"")
        worker.send(T.GRAB_JOB)
        assert worker.recv().type == T.NO_JOB  # every WORK_COMPLETE was read
        # Written by the retry as they are, or (too many for the WAL's room) with the
        # reserve's, in which case the store says how many and still takes no new job.
        wait_for(
            "the held deletes to be written",
            lambda: "written again" in (text := log.read_text()) or _deleted(text) == 20,
        )
        srv.kill()
        srv.wait()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    again = SQLiteStore(db)
    try:
        assert again.count() == 0, "finished jobs would run again"
    finally:
        again.close()


def _deleted(log: str) -> int:
    """Finished jobs whose deletes the store wrote while failing, by its log (-v)."""
    return sum(int(n) for n in re.findall(r"(\d+) finished jobs deleted", log))


def test_a_store_damaged_at_its_first_pages_says_the_same_fix(tmp_path: Path) -> None:
    # Damage that SQLite finds when the store is opened (its schema page), not when the
    # jobs are read, was answered "(use --store PATH, or --store none for memory only)": a
    # fix that strands the queued jobs, where the damage read later says restore or move.
    path = tmp_path / "q.db"
    SQLiteStore(path).close()
    damaged = bytearray(path.read_bytes())
    damaged[100:3000] = b"\xff" * 2900  # page 1 past the file header: the schema
    path.write_bytes(bytes(damaged))
    result = subprocess.run(
        [sys.executable, "-m", "farm.server", "-p", str(free_port()), "--store", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"farm server: the job store {path} cannot be read (database disk image is malformed);"
        " restore it from a backup, or move it and its -wal aside to start empty (its queued"
        " jobs are then lost)"
    )


def test_no_job_is_added_in_the_room_the_reserve_gave_the_deletes(small_disk: Path) -> None:
    # A review's run: the reserve was given back for a delete on a full disk, and a second
    # later the store took background jobs again, written in that room; the disk was full
    # once more with no reserve left, and the jobs that finished next ran again after a
    # restart. Adds wait until the reserve is taken back whole.
    path = small_disk / "q.db"
    store = SQLiteStore(path, retry_after=0.0)
    ids = [store.add(b"H:%d" % i, b"f", b"", BIG, 1, None, 0.0, True) for i in range(10)]
    assert store.commit() == []
    # The WAL as a delete written on a full disk leaves it (_delete_anyway): cut to nothing,
    # so the next write must grow it.
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _fill_disk(small_disk, leave=0)
    store.remove(ids.pop())
    store.commit()
    reserve = small_disk / "q.db-reserve"
    assert reserve.stat().st_size == 0, "the delete needed the reserve's room"
    taken = 0
    for i in range(40):  # submits keep coming, each a turn of its own
        store.add(b"N:%d" % i, b"f", b"", BIG, 1, None, 0.0, True)
        if not store.commit():
            taken += 1
            ids.append(store._next_id - 1)
    for row_id in ids:  # every job stored finishes, one a turn
        store.remove(row_id)
        store.commit()
    assert taken == 0, f"{taken} jobs were written in the reserve's room"
    # Room comes back: the reserve is taken again, then background jobs are.
    (small_disk / "filler").unlink()
    store.add(b"H:new", b"f", b"", b"small", 1, None, 0.0, True)
    assert store.commit() == [] and store.broken is None
    assert reserve.stat().st_size > 0
    store.close()
    again = SQLiteStore(path)
    try:
        assert again.count() == 1, "finished jobs would run again"
    finally:
        again.close()


def test_deletes_on_a_small_full_disk_never_run_out_of_room(small_disk: Path) -> None:
    # Found studying the reserve: the jobs' pages lived only in the WAL (SQLite checkpoints
    # at 1000 pages, 4 MB: twelve times this disk's reserve), so on the full disk no
    # checkpoint fit, every delete grew the WAL, and once the reserve's room was spent the
    # rest could not be written: 16 of 150 here, and 134 finished jobs would run again.
    path = small_disk / "q.db"
    store = SQLiteStore(path, retry_after=0.0)
    ids = [store.add(b"H:%d" % i, b"f", b"", BIG, 1, None, 0.0, True) for i in range(150)]
    assert store.commit() == []
    _fill_disk(small_disk, leave=0)
    for row_id in ids:  # a worker's WORK_COMPLETE per turn
        store.remove(row_id)
        store.commit()
    store.close()
    again = SQLiteStore(path)
    try:
        assert again.count() == 0, "finished jobs would run again"
    finally:
        again.close()
