"""A Python worker recycled (``max_jobs``: no SIGTERM, no drain) whose exit a thread of its
job's code holds: shown as exiting, not idle, killed past ``graceful_timeout`` with a line
that says why, and replaced, so that its slot serves again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

#: A job that leaves a thread running (not a daemon): the worker's loop ends at its
#: recycle, and Python's exit then waits on that thread (for 60 s: past the test's end).
LINGER = """
import threading, time

def run(job):
    threading.Thread(target=time.sleep, args=(60,)).start()
    return b"ok"
"""


def lingering(tmp_path: Path, grace: float) -> tuple[FarmUp, dict[str, Any]]:
    """A farm whose one `linger` worker recycles after a job that leaves a thread (not a
    daemon) holding its exit, with ``grace`` as its drain's; its slot's row, once its first
    call was answered and the worker is shown exiting."""
    (tmp_path / "linger.py").write_text(LINGER)
    pool = '[functions.linger]\ntarget = "linger:run"\nworkers = 1\nmax_jobs = 1\n'
    up = FarmUp(tmp_path, pool, metrics=False, grace=grace)
    try:
        up.expect_notify("READY=1")
        (row,) = up.wait_idle({"linger": 1})
        with Client(up.addr) as c:
            assert c.call("linger", b"", timeout=30) == b"ok"
        # While its code holds it, it is no idle worker of the pool's.
        wait_for(
            "the recycled worker shown exiting",
            lambda: [r["pid"] for r in up.workers("linger", state="exiting")] == [row["pid"]],
        )
    except BaseException:
        up.stop()
        raise
    return up, row


def said_recycled_and_held(up: FarmUp, row: dict[str, Any]) -> None:
    """Wait for the kill of the worker of ``row`` and hold its line to why it was killed."""
    part = f"killing worker linger#0 cpu{row['cpu']} (pid {row['pid']}): "
    line = wait_for(
        "its kill", lambda: next((r for r in up.read_log().splitlines() if part in r), None)
    )
    assert line.endswith(
        "recycled (max_jobs 1 reached) but did not exit: a thread of its code (not a"
        " daemon) or an atexit hook holds it"
    ), line


def test_a_recycled_python_worker_held_by_its_job_s_thread_is_killed_and_replaced(
    tmp_path: Path,
) -> None:
    # It reported its loop ended, and nothing used that outside a drain: the slot showed the
    # same pid `idle` for ever, nothing was logged, and a pool of one served no more jobs.
    up, row = lingering(tmp_path, grace=3)
    first = row["pid"]
    try:
        said_recycled_and_held(up, row)
        (again,) = up.wait_idle({"linger": 1})
        assert again["pid"] != first
        with Client(up.addr) as c:  # the slot serves again
            assert c.call("linger", b"", timeout=30) == b"ok"
        ended = next(r for r in up.read_log().splitlines() if f"(pid {first}, up" in r)
        assert "WARNING" in ended and ended.endswith("restarting now"), ended
    finally:
        assert up.stop() == 0


def test_a_lingering_recycled_worker_retired_meanwhile_is_said_recycled_not_drained(
    tmp_path: Path,
) -> None:
    # A scale-down while it lingers retires it: its kill past the drain's grace said it had
    # "drained", which it never did (no SIGTERM came before its loop ended).
    up, row = lingering(tmp_path, grace=5)
    try:
        assert farm_cli("scale", "linger=0", "--control", up.control).returncode == 0
        said_recycled_and_held(up, row)
    finally:
        assert up.stop() == 0
