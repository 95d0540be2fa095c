"""An older farm's queue.db is looked for beside a default store only (farm.server.legacystore):
beside a store given elsewhere, a queue.db is another program's, or the one the operator
already gave a server, and its jobs were reported stranded at every start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from farm.server.legacystore import legacy_jobs_beside


def queue_db(where: Path, jobs: int) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "queue.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, function TEXT)")
    db.executemany("INSERT INTO jobs (function) VALUES (?)", [("f",)] * jobs)
    db.commit()
    db.close()
    return path


def test_only_a_default_store_looks_for_an_older_farms_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "st?a#te"  # a URI's own characters in the path: read as a path still
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    old = queue_db(state, 2)
    assert legacy_jobs_beside(state / "queue-4731.db") == (old, 2)
    assert legacy_jobs_beside(state / "mine.db") is None  # a store the operator named
    queue_db(tmp_path / "app", 3)
    assert legacy_jobs_beside(tmp_path / "app" / "queue-4731.db") is None  # not the state dir
