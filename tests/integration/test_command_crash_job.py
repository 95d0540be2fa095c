"""A command worker's death is judged by what the job server showed of it lately, never
by an old snapshot (farm.pools.commandjobs): a `farm ps` minutes before a crash named the
job that worker had long finished ("crashed in job H:...: ... (0 jobs); restarting now")
and so changed the restart policy."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from farm.pools.slots import JOB_SEEN_STALE
from tests.helpers.farmproc import FarmUp
from tests.helpers.streams import call_in_thread
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

#: A command worker (a PHP worker's stand-in, on farm's own Worker): "slow" holds its job
#: until the file "go" exists; "die" exits 1 in its job (PHP's exit(1)), "hold-die" exits 2
#: once "go2" exists: each dies the first time only, so that the retry answers.
WORKER = """
import os, sys, time
from pathlib import Path
from farm import Worker

tmp = Path(sys.argv[1])
worker = Worker(os.environ["FARM_SERVERS"].split(","))

def job(j):
    gate = {b"slow": tmp / "go", b"hold-die": tmp / "go2"}.get(j.data)
    while gate is not None and not gate.exists():
        time.sleep(0.02)
    died = tmp / ("died-" + j.data.decode())
    if j.data != b"slow" and not died.exists():
        died.touch()
        os._exit(1 if j.data == b"die" else 2)
    return j.data

worker.register(os.environ["FARM_FUNCTION"], job)
worker.work()
"""


def test_a_crash_in_a_later_job_is_not_put_on_a_job_farm_ps_saw(tmp_path: Path) -> None:
    script, gate = tmp_path / "worker.py", tmp_path / "go"
    script.write_text(WORKER)
    up = FarmUp(
        tmp_path,
        f"""
        [functions.php]
        command = ["{sys.executable}", "{script}", "{tmp_path}"]
        workers = 1
        """,
    )
    try:
        up.expect_notify("READY=1")
        wait_for("a running command worker", lambda: up.workers("php", "running"), 20)
        thread, result = call_in_thread(up.addr, "php", "slow", timeout=30)
        # `farm ps` asks the server's peers: the snapshot of its job in hand.
        seen = wait_for("its job in farm ps", lambda: [r for r in up.workers() if r["job"]])
        old, snapshot = seen[0]["job"], time.monotonic()
        gate.touch()
        thread.join(30)
        assert result == [b"slow"], result
        # The snapshot ages as the reviewer's did (a `farm ps` minutes before): no `farm ps`
        # from here on, or it would be a fresh one. Time itself is what is waited on.
        wait_for("the snapshot gone stale", lambda: time.monotonic() - snapshot > JOB_SEEN_STALE)
        thread, result = call_in_thread(up.addr, "php", "die", timeout=30)
        thread.join(30)  # job_retries = 3: run again by the next worker, which answers
        assert result == [b"die"], result

        def crashes() -> list[str]:
            return [r for r in up.read_log().splitlines() if "crashed" in r]

        crash = wait_for("the crash's warning", crashes)[0]
        assert old not in crash, crash
        # Not the old job's handle: the server's count (admin `served`) says it held one, and
        # which is not known.
        assert "crashed in job: exited with code 1" in crash, crash
        # A job `farm ps` has just seen is still the one the worker dies in: named.
        thread, result = call_in_thread(up.addr, "php", "hold-die", timeout=30)
        seen = wait_for("the new job in farm ps", lambda: [r for r in up.workers() if r["job"]])
        (tmp_path / "go2").touch()
        thread.join(30)
        assert result == [b"hold-die"], result
        crash = wait_for("the second crash's warning", lambda: crashes()[1:])[0]
        assert f"crashed in job {seen[0]['job']}: exited with code 2" in crash, crash
    finally:
        up.stop()
