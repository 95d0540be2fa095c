"""A Python worker retired by a scale-down whose drain runs past its grace: killed, not
waited on for ever, and its end said as what held it (stopped, hung outside a job, or
drained and held by its code's thread), not as a SIGTERM it ignored."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def test_an_idle_python_worker_that_does_not_exit_is_killed_past_the_grace(
    tmp_path: Path,
) -> None:
    # A Python worker with no timeout drains for as long as its job takes when a scale-down
    # (a reload, a restart) retires it; one that held no job and did not exit (stopped here,
    # or hung outside a job) was waited on for ever, in the slot count as draining.
    # (`farm stop` gives every Python worker graceful_timeout: that was bounded already.)
    up = FarmUp(
        tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 2\n', grace=1
    )
    stuck = 0
    try:
        up.expect_notify("READY=1")
        rows = up.wait_idle({"reverse": 2})
        stuck = max(rows, key=lambda r: r["slot"])["pid"]  # the one a scale-down retires
        os.kill(stuck, signal.SIGSTOP)
        assert farm_cli("scale", "reverse=1", "--control", up.control).returncode == 0
        wait_for("the stopped worker killed", lambda: "held no job" in up.read_log())
        wait_for("it reaped", lambda: not [r for r in up.workers("reverse") if r["pid"] == stuck])
    finally:
        if stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stuck, signal.SIGCONT)
        up.stop()


#: A job that leaves a thread running (not a daemon): the worker drains and returns from its
#: loop, and Python's exit then waits on that thread.
LINGER = """
import threading, time

def run(job):
    threading.Thread(target=time.sleep, args=(60,)).start()
    return b"ok"
"""


def killed_line(up: FarmUp, name: str) -> str:
    part = f"killing worker {name}"
    return wait_for(part, lambda: next((r for r in up.read_log().splitlines() if part in r), None))


@pytest.mark.parametrize("timeout", ["timeout = 1\n", ""], ids=["timeout", "no_timeout"])
def test_a_python_worker_held_by_its_job_s_thread_is_said_to_have_drained(
    tmp_path: Path, timeout: str
) -> None:
    # It drained and returned from its loop, and a thread of its job held its exit: killed
    # past the grace, it was said to have "ignored SIGTERM, holding no job" (a pool with a
    # timeout), or to have "held no job, yet had not exited" (one without).
    (tmp_path / "linger.py").write_text(LINGER)
    pool = f'[functions.linger]\ntarget = "linger:run"\nworkers = 1\n{timeout}'
    up = FarmUp(tmp_path, pool, metrics=False, grace=1)
    try:
        up.expect_notify("READY=1")
        (row,) = up.wait_idle({"linger": 1})
        with Client(up.addr) as c:
            assert c.call("linger", b"", timeout=30) == b"ok"
        assert farm_cli("scale", "linger=0", "--control", up.control).returncode == 0
        line = killed_line(up, "linger#0")
        assert line.endswith(
            f"(pid {row['pid']}): drained but did not exit: a thread of its code (not a daemon)"
            " or an atexit hook holds it"
        ), line
    finally:
        assert up.stop() == 0


def test_a_stopped_python_worker_in_a_pool_with_a_timeout_did_not_drain(tmp_path: Path) -> None:
    # One stopped (SIGSTOP) holding no job never took its SIGTERM: "ignored SIGTERM" was
    # said of it, which nothing told the supervisor.
    up = FarmUp(
        tmp_path,
        '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\ntimeout = 1\n',
        metrics=False,
        grace=1,
    )
    stuck = 0
    try:
        up.expect_notify("READY=1")
        (row,) = up.wait_idle({"reverse": 1})
        stuck = row["pid"]
        os.kill(stuck, signal.SIGSTOP)
        assert farm_cli("scale", "reverse=0", "--control", up.control).returncode == 0
        line = killed_line(up, "reverse#0")
        assert line.endswith(f"(pid {stuck}): did not drain in time"), line
    finally:
        if stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stuck, signal.SIGCONT)
        up.stop()
