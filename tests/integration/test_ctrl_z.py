"""Ctrl-Z (SIGTSTP) to `farm up`: the whole farm stops, as a foreground program does, and
`fg` or `bg` (SIGCONT) resumes it. The job server and the workers lead process groups of
their own, so the terminal's SIGTSTP reached the supervisor alone: they served on."""

from __future__ import annotations

import functools
import re
import signal
from pathlib import Path

import psutil
import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 2
"""


def stopped(pids: list[int]) -> bool:
    return all(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in pids)


def running(pids: list[int]) -> bool:
    return not any(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in pids)


def test_ctrl_z_stops_the_whole_farm_and_fg_resumes_it(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, FUNCTIONS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2})
        found = re.search(r"job server starting \(pid (\d+)\)", up.read_log())
        assert found is not None
        server = int(found[1])
        workers = [c.pid for c in psutil.Process(up.proc.pid).children() if c.pid != server]
        assert len(workers) == 2, workers
        farm = [up.proc.pid, server, *workers]
        up.signal(signal.SIGTSTP)  # what the terminal sends its foreground job at Ctrl-Z
        wait_for("the whole farm stopped", functools.partial(stopped, farm))
        up.signal(signal.SIGCONT)  # fg, bg
        wait_for("the whole farm running again", functools.partial(running, farm))
        client = Client(up.addr)
        try:
            assert client.call("reverse", "abc", timeout=10) == b"cba"
        finally:
            client.close()
        log = up.read_log()
        assert "paused (SIGTSTP, Ctrl-Z)" in log and "resumed after" in log, log
        assert up.proc.poll() is None
    finally:
        up.signal(signal.SIGCONT)  # a stop left by a failed wait: SIGTERM waits on it
        assert up.stop() == 0


def test_a_farm_that_is_no_terminals_job_runs_on_at_sigtstp(tmp_path: Path) -> None:
    # Under systemd (or `setsid farm up`) no shell of its session could resume it, and the
    # kernel drops a default SIGTSTP there: stopping its server and workers would leave
    # them stopped for good.
    up = FarmUp(tmp_path, FUNCTIONS, start=False)
    up.new_session = True
    up.start()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2})
        up.signal(signal.SIGTSTP)
        wait_for("the SIGTSTP said", lambda: "SIGTSTP ignored" in up.read_log())
        client = Client(up.addr)
        try:
            assert client.call("reverse", "abc", timeout=10) == b"cba"
        finally:
            client.close()
        farm = [up.proc.pid, *(c.pid for c in psutil.Process(up.proc.pid).children())]
        assert running(farm)
    finally:
        assert up.stop() == 0
