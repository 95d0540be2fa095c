"""farm.server.storebackup.copy_store: PATH is the whole, checked copy or nothing, and no
file already at PATH (or put there during the copy) is ever written."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from farm.server.storebackup import SCRATCH, _started, copy_store
from tests.helpers import ROOT


def store(path: Path) -> sqlite3.Connection:
    """A store-like database, held as the server holds its own (WAL, EXCLUSIVE)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, data BLOB)")
    db.executemany("INSERT INTO jobs (data) VALUES (?)", [(b"x" * 100,)] * 5)
    return db


def test_a_name_made_a_symlink_during_the_copy_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another user who may write the directory swaps PATH for a symlink to a file of the
    # server's user as the copy is opened: a name checked (O_EXCL) and opened again by name
    # had the copy written over that file.
    db = store(tmp_path / "queue.db")
    victim = tmp_path / "precious.db"
    sqlite3.connect(victim).execute("CREATE TABLE precious (x)").connection.close()
    before = victim.read_bytes()
    path = tmp_path / "copy.db"
    connect = sqlite3.connect

    def swapped(name: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        path.unlink(missing_ok=True)
        path.symlink_to(victim)
        return connect(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", swapped)
    with pytest.raises(FileExistsError):
        copy_store(db, str(path))
    assert victim.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".farm-backup-")] == []


def test_an_existing_name_is_refused_before_any_work(tmp_path: Path) -> None:
    db = store(tmp_path / "queue.db")
    (tmp_path / "dangling.db").symlink_to(tmp_path / "nowhere.db")
    with pytest.raises(FileExistsError):
        copy_store(db, str(tmp_path / "dangling.db"))
    assert not (tmp_path / "nowhere.db").exists()
    jobs, size = copy_store(db, str(tmp_path / "copy.db"))
    assert jobs == 5 and size == (tmp_path / "copy.db").stat().st_size


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="kills a process")
def test_a_copy_killed_before_its_end_leaves_nothing_at_the_name(tmp_path: Path) -> None:
    # Killed midway (the OOM killer, kill -9), a copy written at PATH itself was a file
    # whose journal rolled it back to an empty database: restored, a farm with no jobs.
    code = textwrap.dedent(f"""
        import os, signal, sqlite3
        from farm.server import storebackup

        class Killed:
            def __init__(self, db):
                self.db = db
            def backup(self, target):
                self.db.backup(target)
                os.kill(os.getpid(), signal.SIGKILL)  # the copy written, not yet linked

        db = sqlite3.connect({str(tmp_path / "queue.db")!r}, isolation_level=None)
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, data BLOB)")
        db.execute("INSERT INTO jobs (data) VALUES (x'00')")
        storebackup.copy_store(Killed(db), {str(tmp_path / "copy.db")!r})
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert not (tmp_path / "copy.db").exists()


def test_a_scratch_directory_a_killed_server_left_is_removed_by_the_next_backup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()  # a pid no process has now
    host = socket.gethostname()
    left = tmp_path / f"{SCRATCH}{host}.{ended.pid}.123-abc"
    running = tmp_path / f"{SCRATCH}{host}.{os.getpid()}.{_started(os.getpid())}-def"
    elsewhere = tmp_path / f"{SCRATCH}{host}x.{ended.pid}.123-ghi"  # another host's (NFS)
    for scratch in (left, running, elsewhere):
        scratch.mkdir()
        (scratch / "copy.db").write_bytes(b"cut short")
    caplog.set_level(logging.WARNING, "farm.server")
    assert copy_store(store(tmp_path / "q.db"), str(tmp_path / "copy.db"))[0] == 5
    assert not left.exists() and running.exists() and elsewhere.exists()
    assert any(str(left) in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(SCRATCH)) == sorted(
        [running.name, elsewhere.name]
    )  # the copy's own is gone too
