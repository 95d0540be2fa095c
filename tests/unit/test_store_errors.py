"""What the server says of a store SQLite cannot read at start: damage (corrupt pages, not
a database) alone is called damage, whose fix may give up its jobs; a write SQLite could
not make while it read (a temporary file past the file-size limit, a full disk, a temporary
directory it cannot open a file in) is said as such, and the store is never to be moved
aside for it: that advice lost every queued job of a healthy store (a review's run)."""

from __future__ import annotations

import resource
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import farm.server.store
from farm.server.store import DamagedStore, SQLiteStore, StoreError, StoreUnreadable
from farm.server.storefile import unreadable


def _write_failed(tmp_path: Path) -> sqlite3.Error:
    """A real SQLITE_IOERR_WRITE: a sort SQLite spills to a temporary file, past a file-size
    limit lowered in this process for the moment (Python ignores SIGXFSZ)."""
    db = sqlite3.connect(tmp_path / "sorted.db")
    db.execute("CREATE TABLE t (k INTEGER, v BLOB)")
    db.executemany("INSERT INTO t VALUES (?, ?)", ((n % 7, bytes(64 << 10)) for n in range(80)))
    db.commit()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        db.execute("SELECT k, v FROM t ORDER BY k").fetchall()
    except sqlite3.Error as exc:
        return exc
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        db.close()
    raise AssertionError("the sort needed no temporary file")


def _cannot_open(tmp_path: Path) -> sqlite3.Error:
    """A real SQLITE_CANTOPEN: a file SQLite cannot make (a temporary file's, say)."""
    try:
        sqlite3.connect(tmp_path / "no such directory" / "temp.db")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("opened")


@pytest.mark.parametrize("failure", [_write_failed, _cannot_open])
def test_a_read_that_fails_for_a_write_is_not_called_damage(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[[Path], sqlite3.Error],
) -> None:
    error = failure(tmp_path)
    assert error.sqlite_errorname in ("SQLITE_IOERR_WRITE", "SQLITE_CANTOPEN"), error
    path = tmp_path / "q.db"
    store = SQLiteStore(path)
    store.add(b"H:t:1", b"f", b"u", b"x", 1, None, 0.0, True)
    store.commit()

    def fails(*_: object) -> list[tuple[object, ...]]:
        raise error

    monkeypatch.setattr(farm.server.store, "read_rows", fails)
    try:
        with pytest.raises(StoreError) as raised:
            list(store.load())
    finally:
        store.close()
    said = str(raised.value)
    assert not isinstance(raised.value, DamagedStore), said
    assert "aside" not in said and "backup" not in said and "lost" not in said, said
    # What to fix, where: room or the file-size limit, by the store and for temporary files.
    assert "file-size limit" in said and "free space" in said, said
    assert str(tmp_path) in said and "TMPDIR" in said, said
    assert "its queued jobs stay in it" in said, said


def test_a_read_of_the_disk_that_failed_is_neither_damage_nor_want_of_room() -> None:
    # SQLITE_IOERR_READ (EIO from a failing disk) is an I/O error too, but no room or limit
    # would make it readable: said as a read, the jobs kept, never the advice to move aside.
    # Made by hand: no disk here fails its reads on demand.
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = sqlite3.SQLITE_IOERR_READ
    error.sqlite_errorname = "SQLITE_IOERR_READ"
    said = unreadable("/var/lib/farm/queue-4730.db", error)
    assert isinstance(said, StoreUnreadable), said
    assert "a read of the disk failed" in str(said) and "its queued jobs stay in it" in str(said)
    assert "file-size limit" not in str(said) and "aside" not in str(said), said
