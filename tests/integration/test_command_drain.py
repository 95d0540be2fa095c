"""Command workers drained through the job server (farm.pools.commandjobs): a scaled-down
`gearman -w` finishes its job in hand (run once, not requeued) before its stop signal,
`farm ps` shows its job in hand, and a command pool's `timeout` kills an overrunning one
(its worker watched at the cost of its own process tree, not the host's).

The gearman CLI is skipped when absent, and fails instead under FARM_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from farm.client import Client
from tests.helpers.farmproc import RECORD_PROC_OPENS, FarmUp, farm_cli
from tests.helpers.servers import need
from tests.helpers.streams import call_in_thread
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
        thread, result = call_in_thread(up.addr, "slow", "payload", timeout=60)
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
        # The supervisor logs the exit just after it reaps the process (when its pid goes).
        wait_for("its exit logged", lambda: "after draining" in up.read_log(), 10)
        log = up.read_log()
        assert "hands it no more jobs" in log and "after draining" in log, log
        assert "killing worker" not in log, log
    finally:
        assert up.stop() == 0


#: Run as a command worker: opens N connections to the server, kept across the exec of the
#: gearman worker its arguments name (a worker of many connections, as the server sees it).
HOLDER = """
import os, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
for sock in held:
    sock.set_inheritable(True)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def test_a_command_worker_of_hundreds_of_connections_is_drained(tmp_path: Path) -> None:
    """Its connections' names (500, 10 KB) are asked to `drain` in lines within the server's
    8 KB admin line: in one line the server closed the connection unanswered, and the
    worker was stopped at once, its job in hand cut off."""
    need("gearman")
    runs, gate = tmp_path / "runs", tmp_path / "go"
    (tmp_path / "holder.py").write_text(HOLDER)
    up = FarmUp(tmp_path, "", start=False)
    pool = gearman_pool(up, runs, 60, gate=str(gate))
    holder = f'command = ["{sys.executable}", "{tmp_path / "holder.py"}", "{up.port}", "500",'
    up.write_config(pool.replace("command = [", holder, 1))
    up.start()
    try:
        up.expect_notify("READY=1")
        worker = wait_for("a running gearman worker", lambda: up.workers("slow", "running"), 20)[0]
        thread, result = call_in_thread(up.addr, "slow", "payload", timeout=60)
        wait_for("the job in hand in farm ps", lambda: busy_row(up), 10)
        assert farm_cli("scale", "slow=0", "--control", up.control).returncode == 0
        wait_for("the worker draining", lambda: up.workers("slow", "draining"), 5)
        assert psutil.pid_exists(worker["pid"])  # its job runs on: no stop signal yet
        gate.touch()
        thread.join(30)
        assert result == [b"payload"], result
        assert runs.read_text() == "run\n"  # ran once: not cut off and requeued
        wait_for("the worker gone", lambda: not psutil.pid_exists(worker["pid"]), 10)
        assert "hands it no more jobs" in up.read_log()
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


def test_a_command_pools_timeout_reads_its_workers_own_processes_alone(tmp_path: Path) -> None:
    # With a pool `timeout`, the supervisor reads each of its workers' sockets every second,
    # idle or not, for its process tree (a wrapper's worker counts). psutil's children() found
    # that tree by reading /proc/N/stat of every process on the host: beside 1,100 of them,
    # 5,561 files in 5 s for one idle worker. Counted as what it opens, not as CPU time,
    # which a loaded machine makes too noisy to bound, and which is small on a quiet host.
    need("gearman")
    bystander = subprocess.Popen(["sleep", "300"])  # a process of the host's, not the farm's
    opened = tmp_path / "opened"
    up = FarmUp(tmp_path, "", start=False)
    up.write_config(gearman_pool(up, tmp_path / "runs", 60, extra="timeout = 30"))
    up.code = RECORD_PROC_OPENS.format(path=str(opened)) + up.code
    up.start()
    try:
        up.expect_notify("READY=1")
        wait_for("a running gearman worker", lambda: up.workers("slow", "running"), 20)

        def socket_reads() -> int:  # psutil's net_connections() reads the host's TCP table
            return opened.read_text().splitlines().count("/proc/net/tcp")

        idle = socket_reads()
        wait_for("its sockets read 3 times more", lambda: socket_reads() >= idle + 3, 15)
        lines = opened.read_text().splitlines()
        others = [line for line in lines if line.startswith(f"/proc/{bystander.pid}/")]
        assert not others, f"the supervisor read another process's /proc: {others[:5]}"
    finally:
        bystander.kill()
        bystander.wait()
        assert up.stop() == 0


def dead(proc: psutil.Process) -> bool:
    """Killed: gone, or a zombie its new parent (init, once its shell died) has not reaped."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_wrappers_worker_deaf_to_its_stop_signal_is_killed_past_the_grace(
    tmp_path: Path,
) -> None:
    # `sh -c "worker; ..."`: the shell dies of the stop signal at once, and once it was reaped
    # as drained nothing watched its group: a worker in it that did not stop on the signal
    # (a job longer than the grace, a handler that hangs) lived on orphaned, past SIGKILL's
    # time, after a scale-down, a reload or a restart, and after `farm stop` too.
    (tmp_path / "deaf.py").write_text(
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "Path(sys.argv[1]).touch()\n"
        "time.sleep(300)\n"
    )
    wrapper = f'["sh", "-c", "{sys.executable} deaf.py $$; echo done"]'
    up = FarmUp(
        tmp_path,
        f"[functions.deaf]\ncommand = {wrapper}\nworkers = 1\ngraceful_timeout = 1\n",
        supervisor="ready_wait = 1",  # it never connects: READY=1 without it
    )
    inner: list[psutil.Process] = []
    try:
        up.expect_notify("READY=1")

        def deaf_worker() -> psutil.Process:
            (row,) = wait_for("the wrapper", lambda: [r for r in up.workers("deaf") if r["pid"]])
            (child,) = wait_for("its worker", psutil.Process(row["pid"]).children)
            # deaf.py names a file after its shell once it ignores SIGTERM
            wait_for("it ignores SIGTERM", (tmp_path / str(row["pid"])).exists)
            inner.append(child)
            return child

        child = deaf_worker()
        assert farm_cli("scale", "deaf=0", "--control", up.control).returncode == 0
        wait_for("the deaf worker killed past its 1s grace", lambda: dead(child))
        said = [line for line in up.read_log().splitlines() if "to its process group" in line]
        assert said and "deaf#0" in said[0], up.read_log()

        assert farm_cli("scale", "deaf=1", "--control", up.control).returncode == 0
        child = deaf_worker()
        up.signal(signal.SIGTERM)  # farm stop
        assert up.proc.wait(30) == 0
        assert dead(child), "farm stop left the wrapper's worker running"
    finally:
        up.stop()
        for child in inner:  # without the fix they outlive the farm
            if child.is_running():
                child.kill()
