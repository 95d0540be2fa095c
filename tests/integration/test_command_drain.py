"""Command workers drained through the job server (farm.pools.commandjobs): a scaled-down
`gearman -w` finishes its job in hand (run once, not requeued) before its stop signal,
`farm ps` shows its job in hand, and a command pool's `timeout` kills an overrunning one.

The gearman CLI is skipped when absent, and fails instead under FARM_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import need
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


def gearman_pool(up: FarmUp, runs: Path, seconds: float, extra: str = "", gate: str = "") -> str:
    """A `gearman -w` pool whose job notes each run in ``runs``, then sleeps (with
    ``gate``: until that file exists, at most ``seconds``), then echoes."""
    if gate:
        tries = int(seconds * 20)
        wait = f"for i in $(seq {tries}); do [ -e {gate} ] && break; sleep 0.05; done"
    else:
        wait = f"sleep {seconds}"
    script = f"echo run >> {runs}; {wait}; cat"
    return f"""
        [functions.slow]
        command = ["gearman", "-w", "-h", "127.0.0.1", "-p", "{up.port}", "-f", "slow",
                   "--", "sh", "-c", "{script}"]
        workers = 1
        graceful_timeout = 30
        {extra}
        """


def busy_row(up: FarmUp) -> dict | None:
    rows = [r for r in up.workers("slow") if r["job"]]
    return rows[0] if rows else None


def test_a_scaled_down_command_worker_finishes_its_job_once_then_exits(tmp_path: Path) -> None:
    need("gearman")
    runs = tmp_path / "runs"
    up = FarmUp(tmp_path, "", start=False)
    gate = tmp_path / "go"  # the job runs until the test has seen it draining
    up.write_config(gearman_pool(up, runs, 60, gate=str(gate)))
    up.start()
    try:
        up.expect_notify("READY=1")
        worker = wait_for("a running gearman worker", lambda: up.workers("slow", "running"), 20)[0]
        assert worker["job"] is None and worker["jobs"] == 0
        result: list[object] = []

        def call() -> None:
            with Client(up.addr) as client:
                try:
                    result.append(client.call("slow", "payload", timeout=60))
                except BaseException as e:  # reported below
                    result.append(e)

        thread = threading.Thread(target=call)
        thread.start()
        # `farm ps` shows the job in hand of a command worker, from the server's `peers`
        row = wait_for("the job in hand in farm ps", lambda: busy_row(up), 10)
        assert row["pid"] == worker["pid"] and row["job"].startswith("H:")
        assert row["busy_for"] is not None and row["busy_for"] >= 0
        shown = farm_cli("ps", "--control", up.control)
        assert shown.returncode == 0 and row["job"] in shown.stdout, shown.stdout + shown.stderr

        assert farm_cli("scale", "slow=0", "--control", up.control).returncode == 0
        draining = wait_for(
            "the worker draining",
            lambda: [r for r in up.workers("slow") if r["state"] == "draining"],
            5,
        )[0]
        assert draining["pid"] == worker["pid"] and draining["job"] == row["job"]
        assert psutil.pid_exists(worker["pid"])  # its job runs on: no stop signal yet
        scaled = time.monotonic()
        gate.touch()
        thread.join(30)
        assert result == [b"payload"], result
        # it got its stop signal once idle: long before graceful_timeout (30 s)
        wait_for("the worker gone", lambda: not psutil.pid_exists(worker["pid"]), 10)
        assert time.monotonic() - scaled < 15
        assert runs.read_text() == "run\n"  # ran once: not requeued
        log = up.read_log()
        assert "hands it no more jobs" in log and "after draining" in log, log
        assert "killing worker" not in log, log
    finally:
        assert up.stop() == 0


def test_a_command_pools_timeout_kills_an_overrunning_worker(tmp_path: Path) -> None:
    need("gearman")
    runs = tmp_path / "runs"
    up = FarmUp(tmp_path, "", start=False)
    up.write_config(gearman_pool(up, runs, 60, extra="timeout = 1"))
    up.start()
    try:
        up.expect_notify("READY=1")
        first = wait_for("a running gearman worker", lambda: up.workers("slow", "running"), 20)[0]
        with Client(up.addr) as client:
            client.submit("slow", "x", background=True)
        wait_for("the job started", lambda: runs.exists(), 10)

        def replaced() -> dict | None:
            rows = [r for r in up.workers("slow") if r["pid"] and r["pid"] != first["pid"]]
            return rows[0] if rows else None

        new = wait_for("a new worker in the slot", replaced, 15)
        assert new["cpu"] == first["cpu"]
        assert not psutil.pid_exists(first["pid"])
        log = up.read_log()
        assert "ran past its 1s timeout" in log, log
    finally:
        assert up.stop() == 0
