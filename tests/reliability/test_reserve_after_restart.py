"""A store reopened while its disk reserve is still given back takes no job into the room
the deletes need, and one of an older farm opens on a full disk (farm.server.reserve).

Found in a review of the reserve: ``spent`` lived only in memory, so a server restarted
after the reserve was given back (by its supervisor after a crash, or by hand) held the
empty ``STORE-reserve`` as if it were whole, wrote background jobs into the little room
the disk had left, and then had no room for the deletes of the jobs that finished next:
they ran again after the following restart.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.server.reserve import DiskReserve
from farm.server.store import SQLiteStore
from tests.helpers.disks import small_tmpfs

BIG = b"x" * 20_000
#: The jobs table as farm made it before it kept the counts of worker deaths.
BEFORE_RETRIES = (
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT NULL,"
    " data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB, run_at REAL NOT NULL"
    " DEFAULT 0, created REAL NOT NULL DEFAULT 0)"
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "32m") as disk:
        yield disk


def test_a_store_reopened_with_its_reserve_given_back_takes_no_job_in_its_room(
    small_disk: Path,
) -> None:
    path = small_disk / "q.db"
    store = SQLiteStore(path, retry_after=0.0)
    ids = [store.add(b"H:%d" % i, b"f", b"", BIG, 1, None, 0.0, True) for i in range(10)]
    assert store.commit() == []
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next write must grow the WAL
    info = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (info.f_bavail * info.f_frsize))
    store.remove(ids.pop())
    store.commit()
    reserve = small_disk / "q.db-reserve"
    assert reserve.stat().st_size == 0, "the delete needed the reserve's room"
    store.close()  # the server stops (or is killed) with its reserve given back

    again = SQLiteStore(path, retry_after=0.0)  # ... and starts again on the full disk
    try:
        taken = []
        for i in range(40):  # submits keep coming, each a turn of its own
            again.add(b"N:%d" % i, b"f", b"", BIG, 1, None, 0.0, True)
            if not again.commit():
                taken.append(again._next_id - 1)
        for row_id in ids:  # the jobs stored before finish, one a turn
            again.remove(row_id)
            again.commit()
        assert taken == [], f"{len(taken)} jobs were written in the reserve's room"
    finally:
        again.close()
    last = SQLiteStore(path)
    try:
        assert last.count() == 0, "finished jobs would run again"
    finally:
        last.close()


def test_a_store_of_an_older_farm_opens_on_a_full_disk(small_disk: Path) -> None:
    # Found in the same review: the retries column is added at open, and on a full disk
    # the ALTER TABLE could not be written, so a farm upgraded there refused to start
    # (its stored jobs stuck) where the farm before it started and ran them. The reserve
    # gives the migration its room, as it does the deletes.
    path = small_disk / "q.db"
    with sqlite3.connect(path) as old:
        old.execute("PRAGMA journal_mode=WAL")
        old.execute(BEFORE_RETRIES)
        old.executemany(
            "INSERT INTO jobs (id, function, uniq, data, priority) VALUES (?, 'f', '', ?, 1)",
            [(i, BIG) for i in range(1, 51)],
        )
    old.close()
    reserve = DiskReserve(str(path))  # the older farm's, made whole (it kept one too)
    assert reserve.make()
    reserve.close()
    info = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (info.f_bavail * info.f_frsize))
    store = SQLiteStore(path, retry_after=0.0)
    try:
        rows = list(store.load())
        assert [r.retries for r in rows] == [0] * 50
        store.add(b"N:1", b"f", b"", BIG, 1, None, 0.0, True)
        assert store.commit() == [b"N:1"], "no job in the room the deletes need"
        for row in rows:  # the stored jobs run and finish
            store.remove(row.id)
            store.commit()
    finally:
        store.close()
    again = SQLiteStore(path)
    try:
        assert again.count() == 0, "finished jobs would run again"
    finally:
        again.close()


def test_a_reserve_shorter_than_its_size_now_is_not_spent(small_disk: Path) -> None:
    # One made smaller (a disk grown since, an older RESERVE_BYTES) was not given back: a
    # nearly full disk must not turn every background job away for it.
    path = str(small_disk / "q.db")
    made = DiskReserve(path)
    assert made.make()
    made.close()
    os.truncate(path + "-reserve", made.size // 2)
    info = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (info.f_bavail * info.f_frsize))
    again = DiskReserve(path)
    try:
        assert again.make() and not again.spent
    finally:
        again.close()
