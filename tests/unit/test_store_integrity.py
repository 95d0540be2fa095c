"""A stored job whose bytes changed on disk is not replayed: SQLite keeps no checksum of a
row, so a flipped byte in the file (a failing disk, a bad copy) replayed as it was, and a
worker ran garbage. Each row now carries one; a row that fails it is kept aside, not run and
not deleted, and said once."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from farm.server.jobs import JobServer
from farm.server.store import SQLiteStore

#: A payload easy to find in the file's bytes.
PAYLOAD = b"payload-to-be-damaged-0123456789"


def stored(path: Path, *jobs: tuple[bytes, bytes, bytes]) -> None:
    """A store holding ``jobs`` (function, unique, data), closed: the rows in the file."""
    store = SQLiteStore(path)
    for function, unique, data in jobs:
        store.add(b"H:t:1", function, unique, data, 1, None, 0.0, True)
    store.commit()
    store.close()


def flipped(path: Path, found: bytes, at: int = 3) -> None:
    """One byte of ``found`` changed in the file, as a failing disk would."""
    raw = bytearray(path.read_bytes())
    where = raw.index(found) + at
    raw[where] ^= 0x20
    path.write_bytes(bytes(raw))


def test_a_job_damaged_on_disk_is_kept_aside_not_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "q.db"
    stored(path, (b"reverse", b"damaged-one", PAYLOAD), (b"reverse", b"whole", b"fine"))
    flipped(path, PAYLOAD)
    caplog.set_level(logging.WARNING, "farm.server")
    store = SQLiteStore(path)
    try:
        jobs = JobServer(store=store, hostname="t")
        assert jobs.replay() == 1
        assert [j.unique for j in jobs.jobs.values()] == [b"whole"]
    finally:
        store.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "reverse" in errors[0] and "damaged-one" in errors[0] and "checksum" in errors[0]
    assert "damaged_jobs" in errors[0]
    # Kept for the operator, with its bytes as they were read, and not replayed again.
    with sqlite3.connect(path) as db:
        aside = db.execute("SELECT function, uniq, data FROM damaged_jobs").fetchall()
        assert db.execute("SELECT uniq FROM jobs").fetchall() == [(b"whole",)]
    db.close()
    assert len(aside) == 1 and aside[0][:2] == (b"reverse", b"damaged-one")
    assert aside[0][2] != PAYLOAD and len(aside[0][2]) == len(PAYLOAD)
    caplog.clear()
    again = SQLiteStore(path)
    try:
        assert [job.unique for job in again.load()] == [b"whole"]
    finally:
        again.close()
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "damaged-one" in m], "said once, when it was set aside"
    assert [m for m in said if "1 job" in m and "damaged_jobs" in m], "a line says it is there"


def test_a_damaged_function_name_or_unique_is_caught_too(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    stored(path, (b"function-name-here", b"unique-key-here", b"x"))
    flipped(path, b"function-name-here", at=0)
    store = SQLiteStore(path)
    try:
        assert list(store.load()) == []
    finally:
        store.close()
    path2 = tmp_path / "q2.db"
    stored(path2, (b"f", b"unique-key-here", b"x"))
    flipped(path2, b"unique-key-here", at=7)
    store = SQLiteStore(path2)
    try:
        assert list(store.load()) == []
    finally:
        store.close()


def test_rows_of_an_older_farm_without_a_checksum_are_trusted(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    with db:  # the table as farm made it before checksums (no such column)
        db.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT"
            " NULL, data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB, run_at REAL"
            " NOT NULL DEFAULT 0, created REAL NOT NULL DEFAULT 0, retries INTEGER NOT NULL"
            " DEFAULT 0, local INTEGER NOT NULL DEFAULT 1)"
        )
        db.execute(
            "INSERT INTO jobs (function, uniq, data, priority) VALUES (x'66', x'', ?, 1)",
            (PAYLOAD,),
        )
    db.close()
    store = SQLiteStore(path)
    try:
        assert [job.data for job in store.load()] == [PAYLOAD]
        # Its new rows carry one, beside the old row that has none.
        store.add(b"H:t:2", b"f", b"new", b"y", 1, None, 0.0, True)
        store.commit()
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        sums = db.execute("SELECT uniq, checksum IS NULL FROM jobs ORDER BY id").fetchall()
    db.close()
    assert sums == [(b"", 1), (b"new", 0)]


@pytest.mark.parametrize(
    "change",
    [
        "run_at = 4.5e9",  # the job runs at another time
        "priority = 0",  # or before others
        "reducer = NULL",  # its results reduced otherwise
        "reducer = x'6f74686572'",
        # As long as b"reducer-name": its bytes are summed, not only its length.
        "reducer = x'726564756365722d6e6f6d65'",  # b"reducer-nome"
    ],
)
def test_the_checksum_covers_when_and_where_it_runs(tmp_path: Path, change: str) -> None:
    # One field changed a test: a test changing two at once passed with either left out of
    # the checksum.
    path = tmp_path / "q.db"
    store = SQLiteStore(path)
    store.add(b"H:t:1", b"f", b"u", b"x", 2, b"reducer-name", 1.5e9, True)
    store.add(b"H:t:2", b"f", b"whole", b"x", 2, b"reducer-name", 1.5e9, True)
    store.commit()
    store.close()
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE jobs SET {change} WHERE uniq = x'75'")
    db.close()
    store = SQLiteStore(path)
    try:
        assert [job.unique for job in store.load()] == [b"whole"]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT uniq FROM damaged_jobs").fetchall() == [(b"u",)]
    db.close()


def test_a_row_read_as_text_is_checked_alone_not_the_whole_store_refused(
    tmp_path: Path,
) -> None:
    # One flipped bit in a row's header makes a BLOB TEXT of the same bytes, or a number
    # TEXT of the bytes after it: decoding them as UTF-8 raised for the whole store, which
    # was refused (DamagedStore), though the rest of it replays.
    path = tmp_path / "q.db"
    binary = b"\xff\xfe binary payload \x80"
    stored(path, (b"f", b"u1", binary), (b"f", b"u2", b"x"), (b"f", b"u3", b"fine"))
    with sqlite3.connect(path) as db:
        # what the flipped bit does, written by SQL: the BLOB's serial type made TEXT's
        db.execute("UPDATE jobs SET data = CAST(data AS TEXT) WHERE uniq = x'7531'")
        db.execute("UPDATE jobs SET priority = CAST(x'ff01' AS TEXT) WHERE uniq = x'7532'")
    db.close()
    store = SQLiteStore(path)
    try:
        jobs = list(store.load())
    finally:
        store.close()
    # u1's bytes are unchanged: its checksum passes and it runs; u2 is set aside.
    assert [(j.unique, j.data) for j in jobs] == [(b"u1", binary), (b"u3", b"fine")]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT uniq FROM damaged_jobs").fetchall() == [(b"u2",)]
    db.close()


def test_a_row_of_an_older_farm_of_the_wrong_type_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    stored(path, (b"f", b"u1", b"x"), (b"f", b"u2", b"y"))
    with sqlite3.connect(path) as db:  # no checksum (an older farm's), a number read as TEXT
        db.execute(
            "UPDATE jobs SET checksum = NULL, run_at = CAST(x'ff01' AS TEXT) WHERE uniq = x'7531'"
        )
    db.close()
    store = SQLiteStore(path)
    try:
        assert [j.unique for j in store.load()] == [b"u2"]
    finally:
        store.close()


def test_an_unreadable_damaged_jobs_table_alone_refuses_no_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "q.db"
    stored(path, (b"reverse", b"damaged-one", PAYLOAD), (b"reverse", b"whole", b"fine"))
    flipped(path, PAYLOAD)
    store = SQLiteStore(path)  # sets the damaged one aside
    try:
        assert [j.unique for j in store.load()] == [b"whole"]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'damaged_jobs'"
        ).fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    raw = bytearray(path.read_bytes())
    raw[(root - 1) * size : root * size] = b"\xee" * size  # its page garbage, jobs' whole
    path.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING, "farm.server")
    store = SQLiteStore(path)
    try:
        assert [j.unique for j in store.load()] == [b"whole"]
    finally:
        store.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert [m for m in errors if "damaged_jobs cannot be read" in m], errors


def test_a_damaged_jobs_table_that_cannot_be_read_is_said_with_what_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Read to be copied into a store made again, or counted at a start: each says the table
    # cannot be read and what follows from it; a store that never had one says nothing.
    from farm.server.storecheck import copy_aside, kept_aside

    old, new = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    caplog.set_level(logging.WARNING, "farm.server")
    assert copy_aside(old, new, [], "q.db") == 0 and kept_aside(old, "q.db") == 0
    assert not caplog.records, "no table is no news"
    old.execute("CREATE VIEW damaged_jobs AS SELECT json('not json') AS id")
    assert copy_aside(old, new, [], "q.db") == 0 and kept_aside(old, "q.db") == 0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            "the job store q.db: its table damaged_jobs cannot be read (no such column:"
            " aside); not kept in the store made again",
        ),
        (
            logging.ERROR,
            "the job store q.db: its table damaged_jobs cannot be read (malformed JSON);"
            " the other jobs run as usual (docs/operations.md, When things go wrong)",
        ),
    ]
    old.close()
    new.close()
