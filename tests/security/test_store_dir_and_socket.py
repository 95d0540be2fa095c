"""Where the server's own files sit, as other local users would find them: a job store in a
directory another user may change (they could delete it, and its queued jobs, while the
server is down) is warned of at start, and a Unix socket's mode is set on the socket alone,
never through a link another user put at its name after the bind."""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from farm.server.store import SQLiteStore
from farm.unixsocket import set_socket_mode

NOBODY = 65534


def warnings_opening(path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="farm"):
        SQLiteStore(path).db.close()
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("mode", "owner", "said"),
    [
        (0o777, 0, "which is not sticky and may be written by every user"),
        (0o755, NOBODY, "a directory of uid 65534"),
    ],
)
def test_a_store_in_a_directory_another_user_may_change_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, owner: int, said: str
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a directory to another user (CI runs as root)")
    where = tmp_path / "theirs"
    where.mkdir()
    os.chmod(where, mode)
    os.chown(where, owner, -1)
    (warning,) = warnings_opening(where / "queue.db", caplog)
    assert f"the job store {where / 'queue.db'} depends on {where}" in warning, warning
    assert said in warning and "another user may delete or replace it" in warning, warning
    assert "choose a directory only this user may write" in warning, warning


def test_a_store_in_a_sticky_or_private_directory_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # /tmp's way: nobody else may remove or rename the store there, and a file another user
    # made first at its name is refused (test_own_files.py).
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert warnings_opening(sticky / "queue.db", caplog) == []
    assert warnings_opening(tmp_path / "queue.db", caplog) == []


def test_a_sockets_mode_is_never_set_through_a_link_at_its_name(tmp_path: Path) -> None:
    # The server chmod-ed its socket's path after the bind; in a directory others may write,
    # a link swapped in meanwhile had root chmod the file it pointed at.
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.chmod(victim, 0o600)
    path = tmp_path / "gearman.sock"
    path.symlink_to(victim)
    set_socket_mode(str(path), 0o666)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    path.unlink()
    listener = socket.socket(socket.AF_UNIX)
    old = os.umask(0o022)
    try:
        listener.bind(str(path))  # 0755 by the umask, as under a default ACL's mask
    finally:
        os.umask(old)
    try:
        assert set_socket_mode(str(path), 0o660) == os.lstat(path).st_ino
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    finally:
        listener.close()
