"""The look into the other stores beside a server's (farm.server.otherstores): it leaves
each store as it was, never waits on one, and says what it passed by."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from farm.server import otherstores
from farm.server.otherstores import MAY_HOLD, held_jobs, queued_beside, queued_in


def store(path: Path, jobs: int) -> Path:
    """A store as a cleanly stopped server leaves it: WAL mode, no -wal, no -shm."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, data BLOB)")
    db.executemany("INSERT INTO jobs (data) VALUES (x'78')", [()] * jobs)
    db.commit()
    db.close()
    return path


def killed_with_wal(path: Path, rows: int, size: int) -> None:
    """The store of a server killed after ``rows`` jobs of ``size`` bytes: all in its -wal."""
    code = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.executemany('INSERT INTO jobs (data) VALUES (zeroblob(?))', [(int(sys.argv[3]),)]"
        " * int(sys.argv[2]))\n"
        "os._exit(0)\n"  # no close: no checkpoint, the jobs stay in the -wal
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(rows), str(size)], check=True)


def beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_a_cleanly_stopped_store_is_counted_and_left_as_it_was(tmp_path: Path) -> None:
    # The look left a 0-byte -wal (and, as root, one root owned) beside a store its server
    # had stopped cleanly: it is read as it is now, with nothing made.
    path = store(tmp_path / "queue-1.db", 3)
    assert queued_in(path) == 3
    assert beside(path) == ["queue-1.db"]


def test_a_killed_servers_jobs_are_read_from_its_log(tmp_path: Path) -> None:
    path = store(tmp_path / "queue-1.db", 1)
    killed_with_wal(path, 2, 10)
    assert queued_in(path) == 3


def test_a_large_log_is_not_read_and_its_store_is_named_as_one_that_may_hold_jobs(
    tmp_path: Path,
) -> None:
    # Its recovery held the store's lock for seconds, and that store's own server, started
    # meanwhile, was refused as "in use by another server".
    path = store(tmp_path / "queue-1.db", 0)
    killed_with_wal(path, 3, otherstores.MAX_WAL_READ // 2)
    files = beside(path)
    assert queued_in(path) == MAY_HOLD
    assert beside(path) == files  # not opened: no -shm made
    assert "may hold queued jobs" in held_jobs(MAY_HOLD)


def test_a_count_stops_at_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otherstores, "MAX_COUNTED", 4)
    path = store(tmp_path / "queue-1.db", 9)
    assert queued_in(path) == 4
    assert held_jobs(4) == "holds 4 or more queued jobs"


def test_links_and_fifos_are_passed_by(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite followed a link and made its -shm beside the target (and the warning advised
    # --store with the link, which the server refuses); opening a FIFO hung the start.
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    target = store(tmp_path / "elsewhere.db", 2)
    (state / "queue-link.db").symlink_to(target)
    os.mkfifo(state / "queue-fifo.db")
    real = store(state / "queue-real.db", 1)
    found: list[list[tuple[Path, int]]] = []
    look = threading.Thread(target=lambda: found.append(queued_beside(state / "queue-4731.db")))
    look.start()
    look.join(10)
    if look.is_alive():  # blocked opening the FIFO: a writer lets it go, then fail
        os.close(os.open(state / "queue-fifo.db", os.O_WRONLY | os.O_NONBLOCK))
        look.join(10)
        pytest.fail("the look opened a FIFO and waited on it")
    assert found == [[(real, 1)]]
    assert beside(target) == ["elsewhere.db"]  # the link was not followed


def test_the_stores_not_looked_into_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    monkeypatch.setattr(otherstores, "MAX_LOOKED_AT", 2)
    for name in "abcd":
        store(state / f"queue-{name}.db", 1)
    with caplog.at_level(logging.WARNING, logger="farm.server"):
        found = queued_beside(state / "queue-4731.db")
    assert [p.name for p, _ in found] == ["queue-a.db", "queue-b.db"]
    assert f"2 more job stores in {state} were not looked into" in caplog.text


def test_a_store_a_server_holds_is_not_looked_into(tmp_path: Path) -> None:
    path = store(tmp_path / "queue-1.db", 2)
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA locking_mode=EXCLUSIVE')\n"  # as the server holds its own
        "db.execute('INSERT INTO jobs (data) VALUES (1)')\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        files = beside(path)
        assert queued_in(path) == 0
        assert beside(path) == files
    finally:
        holder.communicate(timeout=20)
