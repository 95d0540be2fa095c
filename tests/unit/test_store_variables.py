"""A batch of adds fits the 999 variables a statement may take in SQLite < 3.32 (RHEL 8's
3.26, Ubuntu 20.04's 3.31): 100 rows a statement were sized for 9 columns, and the checksum
made them 10, so a burst of 100 background submits failed there ("too many SQL variables")
and the store was marked broken. Newer SQLite allows more; the limit is set here to test it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from farm.server.store import SQLiteStore


def test_100_adds_fit_within_999_variables(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    try:
        store.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        for i in range(100):
            store.add(b"H:t:%d" % i, b"f", b"u%d" % i, b"x", 1, None, 0.0, True)
        assert store.commit() == []
        assert store.broken is None
        assert store.count() == 100
        # the deletes' statements too, under the same limit
        for i in range(1, 101):
            store.remove(i)
        assert store.commit() == []
        assert store.count() == 0
    finally:
        store.close()
