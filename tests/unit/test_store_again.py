"""The store made again after an rm, put at its path when something stood there first.

make_again writes the new store under a name of its own (STORE-again), closes the deleted
store's connection, then renames it in: a failure after that close left the store failing
until a restart, its jobs only in STORE-again, which no start reads.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from farm.server.reserve import DiskReserve
from farm.server.storeagain import AGAIN, NotInPlace, put_in_place
from farm.server.storeopen import open_database
from farm.server.storesql import write_rows


def made(path: Path) -> str:
    """A store made again, holding one job, closed at its own name beside ``path``."""
    where = f"{path}{AGAIN}"
    aside = DiskReserve(where)
    db, _ = open_database(where, "normal", aside)
    write_rows(db, [(1, b"f", b"u", b"x", 1, None, 0.0, 0.0, True)], {}, [])
    db.close()
    aside.close()
    Path(aside.path).unlink()
    return where


def deleted(tmp_path: Path) -> sqlite3.Connection:
    """The deleted store's connection, which put_in_place closes."""
    reserve = DiskReserve(str(tmp_path / "deleted.db"))
    db, _ = open_database(reserve.store, "normal", reserve)
    reserve.close()
    return db


def test_a_directory_at_the_path_keeps_the_store_where_it_was_made(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    where = made(path)
    reserve = DiskReserve(str(path))
    old = deleted(tmp_path)
    path.mkdir()  # put there between the look and the rename
    aside = put_in_place(old, str(path), where, None, "normal", reserve)
    assert isinstance(aside, NotInPlace), "the directory written over?"
    assert aside.where == where and f"its jobs are in {where}" in aside.why
    assert aside.db is not None, "nowhere to write the deletes of the jobs that finish"
    write_rows(aside.db, [], {}, [(1,)])  # one finished meanwhile: deleted there
    write_rows(aside.db, [(2, b"f", b"v", b"y", 1, None, 0.0, 0.0, True)], {}, [])
    path.rmdir()
    db = put_in_place(aside.db, str(path), aside.where, aside.identity, "normal", reserve)
    assert not isinstance(db, NotInPlace), db.why
    try:
        assert db.execute("SELECT uniq FROM jobs").fetchall() == [(b"v",)]
    finally:
        db.close()
        reserve.close()
    assert not os.path.exists(where)


def test_the_store_made_again_moved_to_the_path_by_hand_is_taken_as_it_is(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    where = made(path)
    reserve = DiskReserve(str(path))
    old = deleted(tmp_path)
    path.mkdir()
    aside = put_in_place(old, str(path), where, None, "normal", reserve)
    assert isinstance(aside, NotInPlace) and aside.db is not None
    path.rmdir()
    os.rename(where, path)  # what the log says to do, done while the server runs
    db = put_in_place(aside.db, str(path), aside.where, aside.identity, "normal", reserve)
    assert not isinstance(db, NotInPlace), db.why
    try:
        assert db.execute("SELECT uniq FROM jobs").fetchall() == [(b"u",)]
    finally:
        db.close()
        reserve.close()
