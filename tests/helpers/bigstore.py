"""A SQLite job store holding many queued jobs, whose replay at a server's start takes
seconds (tests/integration/test_start_extension.py, test_cli_server_down.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from farm.server.storeopen import SCHEMA


def large_store(path: Path, jobs: int) -> None:
    """``jobs`` background jobs of a function no one serves (30 to 120 µs a job to replay),
    made in well under a second."""
    db = sqlite3.connect(path)
    db.execute(SCHEMA)
    db.executemany(
        "INSERT INTO jobs (function, uniq, data, priority) VALUES (?, ?, ?, 1)",
        ((b"nobody.serves", b"u%d" % n, b"x") for n in range(jobs)),  # queued, never run
    )
    db.commit()
    db.close()
    path.chmod(0o600)
