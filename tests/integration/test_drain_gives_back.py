"""A draining worker (`farm scale` down, `farm restart`) gives back, unrun, a job the server
assigned it after its RESET_ABILITIES left: that job runs on another worker with no retry
counted, so under `job_retries = 1` (at most once) scaling down fails no job
(docs/operations.md, Scaling; docs/held-grab.md, give-back)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(150)

FAST = """
def run(job):
    return job.data
"""

# Clients in another process: THREADS threads call "fast" back to back, more than the pool's
# smallest size, so jobs wait and every grab is answered at once (the drain's RESET_ABILITIES
# then often crosses an assignment on the wire). Each failed call prints "FAILED ..."; stdin's
# close stops them, and the number of calls answered is printed last.
STREAM = """
import sys, threading
from farm.client import Client

addr, threads = sys.argv[1], int(sys.argv[2])
stop = threading.Event()
answered = [0] * threads

def calls(n):
    with Client(addr) as client:
        i = 0
        while not stop.is_set():
            payload = f"{n}-{i}"
            try:
                out = client.call("fast", payload, timeout=30)
                if out != payload.encode():
                    print(f"FAILED wrong {out!r}", flush=True)
                answered[n] += 1
            except Exception as e:
                print(f"FAILED {payload} {type(e).__name__}: {e}", flush=True)
            i += 1

workers = [threading.Thread(target=calls, args=(n,)) for n in range(threads)]
for t in workers:
    t.start()
sys.stdin.read()
stop.set()
for t in workers:
    t.join()
print("ANSWERED", sum(answered), flush=True)
"""

BIG, SMALL = 5, 1
ROUNDS, RESTARTS = 6, 3
THREADS = 6


def _serving(up: FarmUp, n: int) -> bool:
    rows = up.workers("fast")
    return len(rows) == n and all(r["state"] in ("idle", "busy") for r in rows)


def _scale_rounds(up: FarmUp) -> None:
    """The pool scaled up and down ROUNDS times: each scale-down drains BIG - SMALL workers."""
    deadline = time.monotonic() + 90  # bounded in time too, on a slow host
    for _ in range(ROUNDS):
        for n in (BIG, SMALL):
            done = farm_cli("scale", f"fast={n}", "--control", up.control)
            assert done.returncode == 0, done.stderr
            wait_for(f"{n} fast workers serving", lambda n=n: _serving(up, n), timeout=30)
        if time.monotonic() > deadline:
            break


def _restart_rounds(up: FarmUp) -> None:
    """`farm restart fast` RESTARTS times: each drains every worker of the pool."""
    done = farm_cli("scale", f"fast={BIG}", "--control", up.control)
    assert done.returncode == 0, done.stderr
    wait_for(f"{BIG} fast workers serving", lambda: _serving(up, BIG), timeout=30)
    for _ in range(RESTARTS):
        done = farm_cli("restart", "fast", "--control", up.control, timeout=90)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("drains", [_scale_rounds, _restart_rounds], ids=["scale", "restart"])
def test_draining_workers_while_jobs_flow_fails_no_job_under_job_retries_1(
    tmp_path: Path, drains: Callable[[FarmUp], None]
) -> None:
    (tmp_path / "fast.py").write_text(FAST)
    up = FarmUp(
        tmp_path,
        f"""
        [functions.fast]
        target = "fast:run"
        workers = {SMALL}
        """,
        job_retries=1,
        metrics=False,
    )
    stream = None
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"fast": SMALL})
        stream = subprocess.Popen(
            [sys.executable, "-c", STREAM, up.addr, str(THREADS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=up.env,
        )
        drains(up)
        out, _ = stream.communicate("", timeout=60)
        lines = out.splitlines()
        assert lines and lines[-1].startswith("ANSWERED "), out[-2000:]
        assert int(lines[-1].split()[1]) > 100, "jobs flowed while workers drained"
        failed = [line for line in lines if line.startswith("FAILED")]
        assert not failed, (len(failed), failed[:3])
        log = up.read_log()
        assert "poison job" not in log and "job_retries = 1 allows" not in log, log[-3000:]
    finally:
        if stream is not None and stream.poll() is None:
            stream.kill()
            stream.wait()
        assert up.stop() == 0
