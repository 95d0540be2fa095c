"""tests/helpers/servers.py's start_farm_server: it returns a server that listens where it
was asked to, or raises and leaves none running."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

import tests.helpers.servers as servers
from tests.helpers.servers import start_farm_server


@pytest.mark.timeout(60)
def test_a_server_that_dies_before_its_unix_socket_is_said_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed once its TCP port answered: the helper waited 10 s for the path, or returned
    # the dead server to the test if the path was there already.
    real = servers.wait_for
    before = {p.pid for p in psutil.Process().children()}

    def killing_first(what: str, *args: Any, **kwargs: Any) -> Any:
        if what == "the Unix socket":
            (server,) = [p for p in psutil.Process().children() if p.pid not in before]
            server.kill()
            # Its exit waited for, not reaped (the helper's Popen does that): a zombie in
            # ps, its threads may still be ending, and waitpid not yet report it.
            os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOWAIT)
        return real(what, *args, **kwargs)

    monkeypatch.setattr(servers, "wait_for", killing_first)
    with pytest.raises(AssertionError, match="the server exited .* before its Unix socket"):
        start_farm_server(unix=str(tmp_path / "farm.sock"))


@pytest.mark.timeout(60)
def test_a_failed_wait_leaves_no_server_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interrupt (or a timeout) in the wait for the Unix socket left the server running,
    # owned by nobody, for the rest of the session.
    real = servers.wait_for

    def interrupted(what: str, *args: Any, **kwargs: Any) -> Any:
        if what == "the Unix socket":
            raise KeyboardInterrupt
        return real(what, *args, **kwargs)

    monkeypatch.setattr(servers, "wait_for", interrupted)
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(KeyboardInterrupt):
        start_farm_server(unix=str(tmp_path / "farm.sock"))
    started = [p for p in psutil.Process().children() if p.pid not in before]
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:  # not for the rest of the session, failed or not
        p.kill()
    assert left == []


@pytest.mark.timeout(30)
def test_a_unix_socket_counts_once_it_listens_not_once_it_is_bound(tmp_path: Path) -> None:
    # bind() makes the file before listen(): a test that connected then was refused.
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        assert not servers._unix_listens(path)
        sock.listen()
        assert servers._unix_listens(path)
