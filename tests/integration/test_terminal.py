"""`farm up` run by hand in a terminal (a real pseudo-terminal): what becomes of the farm
when that terminal goes away under it, or holds its output back."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp

pytestmark = pytest.mark.timeout(60)

PRINTER = """
[functions.shout]
target = "printer:shout"
workers = 1
"""


@pytest.fixture
def printer(tmp_path: Path) -> Path:
    (tmp_path / "printer.py").write_text(
        "def shout(job):\n    print('shouting', job.data.decode(), flush=True)\n"
        "    return job.data\n"
    )
    return tmp_path


def on_terminal(up: FarmUp, terminal: int, **popen: object) -> None:
    """Start ``up``'s `farm up` with its log (stdout, stderr) on ``terminal``."""
    up.proc = subprocess.Popen(
        [sys.executable, "-c", up.code, "up", "-c", up.config_arg, *up.up_args],
        cwd=up.tmp,
        env=up.env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        **popen,  # type: ignore[arg-type]
    )


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    master, terminal = pty.openpty()
    yield master, terminal
    for fd in (master, terminal):
        try:
            os.close(fd)
        except OSError:
            pass  # the test closed it itself


def test_a_worker_printing_after_the_terminal_closed_does_not_end_the_farm(
    printer: Path, pty_pair: tuple[int, int]
) -> None:
    """The terminal `farm up` logs to is closed (its window, an ssh session gone): each write
    to it fails with EIO. A Python worker's line the supervisor writes on its log was such a
    write, unguarded: the supervisor died of it mid-loop, killing every worker and the job
    server at once, their jobs cut off with no drain. A lost log line is dropped instead, as
    the logging module drops one of the supervisor's own."""
    master, terminal = pty_pair
    up = FarmUp(printer, PRINTER, start=False, metrics=False)
    # A session of its own: the terminal is not its controlling one, so its close is the
    # failing writes alone, no SIGHUP.
    on_terminal(up, terminal, start_new_session=True)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"shout": 1})
        os.close(master)  # the terminal's window closed: writes to it fail with EIO
        with Client(up.addr) as client:
            assert client.call("shout", b"one", timeout=20) == b"one"
            assert client.call("shout", b"two", timeout=20) == b"two"
        assert up.alive(), "farm up died of its log's terminal going away"
        assert up.proc.poll() is None
    finally:
        assert up.stop() == 0
