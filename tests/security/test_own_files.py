"""Files the server writes, as other local users would find them: the job store (the
jobs' payloads) closed to them, and no link, nor a file of theirs, planted at a pid or log
path written to."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from farm.logs import setup_logging
from farm.server.store import SQLiteStore, StoreError
from tests.helpers.servers import free_port

NOBODY = 65534


def planted(tmp_path: Path, name: str, text: str = "") -> Path:
    """A file open to all that another user (nobody) made first in a directory everyone
    may write (a sticky one, as /tmp). Needs root, as CI runs."""
    if os.getuid() != 0:
        pytest.skip("needs root to make a file of a second local user (CI runs as root)")
    shared = tmp_path / "tmp"
    shared.mkdir(exist_ok=True)
    os.chmod(shared, 0o1777)
    path = shared / name
    path.write_text(text)
    os.chmod(path, 0o666)
    os.chown(path, NOBODY, NOBODY)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_and_its_directory_are_closed_to_other_users(tmp_path: Path) -> None:
    path = tmp_path / "state" / "farm" / "queue.db"
    store = SQLiteStore(path)
    store.add(b"H:x:1", b"f", b"", b"secret payload", 1, None, 0.0, True)
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


def test_a_store_or_wal_another_user_made_first_is_refused(tmp_path: Path) -> None:
    # A store path in /tmp: another user made the file (or its WAL) first, open to all. The
    # server (as root) closed it to mode 600 and wrote the jobs into it, but it stayed that
    # user's: a chmod back and they read every payload.
    for name in ("a.db", "b.db-wal"):
        theirs = planted(tmp_path, name)
        with pytest.raises(StoreError, match=f"belongs to uid {NOBODY}"):
            SQLiteStore(theirs.with_name(name.removesuffix("-wal")))
        assert theirs.read_bytes() == b""


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


def _server_with(*flags: str) -> subprocess.CompletedProcess[str]:
    """`farm server` with ``flags``, expected to refuse them before it serves: its port is
    held here, so a server that took them writes to the files and exits (no wait)."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = str(held.getsockname()[1])
        return subprocess.run(
            [sys.executable, "-m", "farm.server", "--port", port, "--store", "none", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_a_pid_or_log_file_another_user_made_first_is_refused(tmp_path: Path) -> None:
    # In a directory everyone may write (/tmp), another user made the files first, open to
    # all: the server (as root) wrote its pid and its log into them, so that user read the
    # log, and rewrote the pid for root's logrotate (`kill -HUP $(cat pidfile)`) to signal.
    for name, flag in (("farm.pid", "-P"), ("farm.log", "--log-file")):
        theirs = planted(tmp_path, name, "theirs\n")
        run = _server_with(flag, str(theirs))
        assert run.returncode == 2, run.stderr
        assert f"belongs to uid {NOBODY}" in run.stderr, run.stderr
        assert theirs.read_text() == "theirs\n"


def test_a_hard_link_at_the_pid_or_log_path_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    for name, flag in (("farm.pid", "-P"), ("farm.log", "--log-file")):
        link = tmp_path / name
        os.link(victim, link)
        run = _server_with(flag, str(link))
        assert run.returncode == 2, run.stderr
        assert "other links" in run.stderr, run.stderr
        assert victim.read_text() == "keep me\n"
