"""Files the server writes, as other local users would find them: the job store (the
jobs' payloads) closed to them, and no link planted at a pid or log path followed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from farm.logs import setup_logging
from farm.server.store import SQLiteStore, StoreError
from tests.helpers.servers import free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_and_its_directory_are_closed_to_other_users(tmp_path: Path) -> None:
    path = tmp_path / "state" / "farm" / "queue.db"
    store = SQLiteStore(path)
    store.add(b"H:x:1", b"f", b"", b"secret payload", 1, None, 0.0)
    store.commit()
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    wal = Path(str(path) + "-wal")
    assert wal.exists() and mode(wal) & 0o077 == 0, oct(mode(wal))


def test_a_store_left_readable_by_others_is_closed_to_them(tmp_path: Path) -> None:
    # Its group too: the farm's group is for callers, who must not read each other's jobs.
    path = tmp_path / "queue.db"
    SQLiteStore(path).db.close()
    os.chmod(path, 0o644)
    SQLiteStore(path)
    assert mode(path) == 0o600


def test_a_link_at_the_store_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not a store")
    (tmp_path / "queue.db").symlink_to(target)
    with pytest.raises(StoreError):
        SQLiteStore(tmp_path / "queue.db")
    assert target.read_text() == "not a store"


def test_the_server_refuses_a_link_at_its_pid_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "farm.pid"
    link.symlink_to(victim)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "farm.server",
            "--port",
            str(free_port()),
            "--store",
            "none",
            "-P",
            str(link),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "pid file" in run.stderr
    assert victim.read_text() == "keep me\n"


def test_a_log_file_is_not_opened_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "farm.log"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        setup_logging(role="test", text_format="%(message)s", filename=str(link))
    assert victim.read_text() == "keep me\n"
