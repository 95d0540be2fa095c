"""`farm server` run as its command runs it, with a state directory of the test's own: the
default stores (queue-PORT.db) it keeps there, for the tests of which store a server takes
and which it names as holding jobs no server runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from farm.client import Client
from tests.helpers import ROOT
from tests.helpers.servers import wait_connectable


def state_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a server whose state directory is under ``tmp_path``."""
    return dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), PYTHONPATH=str(ROOT))


def server(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``farm server ARGS`` started in the repository, its output kept for the test."""
    argv = [sys.executable, "-c", "from farm.cli import main; main()", "server", *args]
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def served(env: dict[str, str], port: int, *args: str) -> str:
    """What a server on ``port`` with ``args`` said on stderr from its start to its stop (a
    SIGTERM once it listens; exit 0)."""
    proc = server(env, "-p", str(port), *args)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def stopped_holding_a_job(env: dict[str, str], port: int) -> None:
    """A server on ``port`` with its default store, stopped holding one background job."""
    first = server(env, "-p", str(port))
    try:
        wait_connectable(f"127.0.0.1:{port}", first)
        with Client(f"127.0.0.1:{port}") as client:
            client.submit("f", b"x", background=True)
    finally:
        first.terminate()
        first.communicate(timeout=20)
