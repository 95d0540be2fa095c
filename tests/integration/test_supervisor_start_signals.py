"""Signals that reach `farm up` before its handlers are in: its first half second, which
`systemctl reload` waits out but an operator's `kill -HUP` or a config tool does not."""

from __future__ import annotations

import functools
import os
import re
import signal
import time
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""
HUP = 1 << (signal.SIGHUP - 1)  # its bit in /proc's signal masks


def hangup_window(pid: int) -> bool | None:
    """True while farm's own code runs (SIGHUP held, or the supervisor's title set) and no
    SIGHUP handler is in yet; False once it is (too late); None before farm's code runs."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended: what the caller's checks then say
        return False
    masks = {
        k: int(v, 16)
        for k, _, v in (line.partition(":\t") for line in status.splitlines())
        if k in ("SigBlk", "SigCgt")
    }
    if masks["SigCgt"] & HUP:
        return False
    return bool(masks["SigBlk"] & HUP or title.startswith(b"farm: supervisor")) or None


def stopped(pid: int) -> bool:
    return "T (stopped)" in Path(f"/proc/{pid}/status").read_text()


def hang_up_early(tmp: Path) -> FarmUp:
    """`farm up`, sent SIGHUP while it is in the window: stopped (SIGSTOP) as soon as a poll
    sees it there, checked again while it cannot move on, hung up on, let go. Tried again
    on a new farm where it had moved on (before the fix the window was milliseconds)."""
    for attempt in range(8):
        where = tmp / f"try{attempt}"
        where.mkdir()
        up = FarmUp(where, FUNCTIONS, extra_env={"XDG_STATE_HOME": str(where)})
        pid = up.proc.pid
        deadline = time.monotonic() + 20
        while (inside := hangup_window(pid)) is None and time.monotonic() < deadline:
            # A tight poll (the window is not an event anything announces), that lets the
            # farm it waits for have the CPU between two looks on a machine of two cores.
            os.sched_yield()
        if inside:
            os.kill(pid, signal.SIGSTOP)
            wait_for("farm up stopped", functools.partial(stopped, pid))
            if hangup_window(pid):
                os.kill(pid, signal.SIGHUP)
                os.kill(pid, signal.SIGCONT)
                return up
            os.kill(pid, signal.SIGCONT)
        up.stop()
    raise AssertionError("never caught `farm up` between its start and its SIGHUP handler")


def test_a_sighup_before_the_handlers_are_in_is_a_reload_not_the_end(tmp_path: Path) -> None:
    up = hang_up_early(tmp_path)
    try:
        said = up.expect_notify("READY=1")
        # The reload came before the farm was up: it must not tell systemd so (READY=1 at
        # its end ended the start while the server did not yet listen), nor RELOADING=1.
        start = said[: said.index("READY=1")]
        assert "RELOADING=1" not in start and any("workers up" in m for m in start), said
        up.wait_idle({"reverse": 1})
        client = Client(up.addr)
        try:
            assert client.call("reverse", "abc", timeout=10) == b"cba"
        finally:
            client.close()
        assert up.proc.poll() is None
        assert "reloaded" in up.read_log()  # held, then honoured once the loop ran
    finally:
        assert up.stop() == 0


def server_pid(up: FarmUp) -> str | None:
    found = re.search(r"job server starting \(pid (\d+)\)", up.read_log())
    return found and found[1]


def usr1_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    shared = next(line for line in status.splitlines() if line.startswith("ShdPnd:"))
    return bool(int(shared.split()[1], 16) >> (signal.SIGUSR1 - 1) & 1)


def test_a_stop_that_reaches_the_server_before_its_handler_ends_it_cleanly(
    tmp_path: Path,
) -> None:
    # `farm up` stops its job server with SIGUSR1. A Ctrl-C in the server's first 0.3 s (its
    # interpreter's start and imports) reached it at Python's default, and the log said the
    # server "was killed by SIGUSR1". Here the server is held (SIGSTOP) before it listens
    # while the farm stops, and let go once the stop waits on it.
    for attempt in range(5):
        where = tmp_path / f"try{attempt}"
        where.mkdir()
        up = FarmUp(where, FUNCTIONS)
        try:
            pid = int(wait_for("the server's start", functools.partial(server_pid, up)))
            os.kill(pid, signal.SIGSTOP)
            wait_for("the server stopped", functools.partial(stopped, pid))
            if up.unix.exists():  # it listened already: not the window; a new farm
                os.kill(pid, signal.SIGCONT)
                continue
            up.signal(signal.SIGINT)
            wait_for("the stop sent to the server", functools.partial(usr1_pending, pid))
            os.kill(pid, signal.SIGCONT)
            assert up.proc.wait(30) == 0
            log = up.read_log()
            assert f"job server (pid {pid}) exited with code 0" in log, log
            return
        finally:
            up.stop()
    raise AssertionError("never caught the job server before it listened")
