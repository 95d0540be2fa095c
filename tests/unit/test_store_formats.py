"""A store this farm cannot read is refused before anything is written to it.

Found in an upgrade hunt: a file whose `jobs` table is not farm's (another program's
database given as the store) was given farm's three newer columns, then refused with the
advice to start empty; and a store whose user_version says a newer farm wrote it (a
downgrade after an upgrade that changed what a row means) would be replayed as if read.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from farm.server.store import SQLiteStore, StoreError
from farm.server.storeopen import STORE_FORMAT

#: The jobs table as the first farm with a store made it (3b4f38b, November 2026).
FIRST_SCHEMA = (
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT NULL,"
    " data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB, run_at REAL NOT NULL"
    " DEFAULT 0)"
)


def made(path: Path, *statements: str) -> bytes:
    """A database at ``path`` made by ``statements``; its bytes, to compare after."""
    db = sqlite3.connect(path)
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()
    return path.read_bytes()


def test_another_programs_jobs_table_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    before = made(
        path,
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT, state TEXT)",
        "INSERT INTO jobs (name, state) VALUES ('nightly', 'done')",
    )
    with pytest.raises(StoreError) as refused:
        SQLiteStore(path)
    message = str(refused.value)
    assert str(path) in message and "not farm's" in message and "function" in message
    assert "start empty" not in message  # the file is not a store whose jobs are lost
    assert path.read_bytes() == before


def test_a_store_of_a_newer_format_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SQLiteStore(path)
    store.close()
    with sqlite3.connect(path) as db:  # as a farm whose rows this one would misread
        db.execute(f"PRAGMA user_version = {STORE_FORMAT + 1}")
        db.execute("INSERT INTO jobs (function, uniq, data, priority) VALUES ('f', '', 'z', 1)")
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as refused:
        SQLiteStore(path)
    message = str(refused.value)
    assert str(path) in message and f"format {STORE_FORMAT + 1}" in message
    assert "newer farm" in message and "upgrade farm" in message
    assert path.read_bytes() == before


def test_stores_of_older_farms_and_of_this_one_still_open(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    made(
        old,
        FIRST_SCHEMA,
        "INSERT INTO jobs (function, uniq, data, priority) VALUES ('f', '', x'78', 1)",
    )
    store = SQLiteStore(old)
    try:
        assert [job.data for job in store.load()] == [b"x"]
    finally:
        store.close()
    current = tmp_path / "current.db"
    SQLiteStore(current).close()
    SQLiteStore(current).close()


def test_an_older_farms_store_says_the_columns_it_gained_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found upgrading a farm with jobs in its store: the new farm added its columns to the
    # older farm's file with no word of it, so the operator could not tell the file changed.
    old = tmp_path / "old.db"
    made(old, FIRST_SCHEMA)
    current = tmp_path / "current.db"
    with caplog.at_level(logging.WARNING, logger="farm.server"):
        for path in (old, old, current):
            SQLiteStore(path).close()
    said = [r.getMessage() for r in caplog.records if "gained the columns" in r.getMessage()]
    assert said == [
        f"the job store {old}, an older farm's, gained the columns created, retries, local,"
        " checksum (its jobs get their defaults; an older farm still reads it:"
        " docs/operations.md, Upgrading)"
    ]
