"""A command pool's settings changed by `farm reload`, and what its stop tells the
operator (docs/operations.md, "Command pools" and "Steering a running farm").

The workers here are shell scripts and a Python `farm.Worker` run as a command, so no
PHP or gearman CLI is needed.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

# Ignores SIGTERM (as a PHP worker with pcntl_signal(SIGTERM, SIG_IGN) does) and stops
# cleanly on SIGINT, noting that it did.
STOPS_ON_SIGINT = """\
trap '' TERM
trap 'touch "$1/stopped-by-int"; exit 0' INT
echo "worker up"
while :; do sleep 0.1; done
"""


def test_a_reloaded_stop_signal_reaches_the_pools_workers(tmp_path: Path) -> None:
    # A changed stop_signal was neither applied to the running workers nor did it replace
    # them: `farm reload` said "reloaded", and the next stop sent the old SIGTERM, which the
    # worker ignored, and SIGKILL followed after the grace, mid-job.
    script = tmp_path / "worker.sh"
    script.write_text(STOPS_ON_SIGINT)
    pool = f"""
        [functions.stubborn]
        command = ["sh", "{script}", "{tmp_path}"]
        workers = 1
        graceful_timeout = 5
        """
    up = FarmUp(tmp_path, pool)
    try:
        wait_for("the control socket", up.alive)
        (first,) = wait_for("the worker", lambda: [r for r in up.workers("stubborn") if r["pid"]])
        up.write_config(pool + 'stop_signal = "SIGINT"\n')
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        (new,) = wait_for(
            "a worker started with the new stop_signal",
            lambda: [r for r in up.workers("stubborn") if r["pid"] not in (None, first["pid"])],
        )
        assert farm_cli("scale", "stubborn=0", "--control", up.control).returncode == 0
        wait_for("the worker stopped by SIGINT", (tmp_path / "stopped-by-int").exists)
        wait_for("it gone", lambda: not psutil.pid_exists(new["pid"]))
        assert f"killing worker stubborn#0 cpu{new['cpu']} (pid {new['pid']})" not in (
            up.read_log()
        )
    finally:
        assert up.stop() == 0


# A command worker (any language; Python here) whose job runs until the test lets it go.
SLOW_WORKER = """\
import os, sys, time
from pathlib import Path
import farm

worker = farm.Worker(os.environ["FARM_SERVERS"])

@worker.function("slow")
def slow(job):
    Path(sys.argv[1], "started").touch()
    time.sleep(30)
    return b"done"

worker.work()
"""


def slow_farm(tmp_path: Path, grace: int) -> FarmUp:
    """A farm of one command worker of SLOW_WORKER (its job writes ``started``, then takes
    30 s), its pool's graceful_timeout ``grace``."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WORKER)
    return FarmUp(
        tmp_path,
        f"""
        [functions.slow]
        command = ["{sys.executable}", "{script}", "{tmp_path}"]
        workers = 1
        graceful_timeout = {grace}
        """,
    )


def slow_job_started(up: FarmUp, tmp_path: Path) -> tuple[dict[str, Any], Any]:
    """Once slow_farm's worker serves, a background job it has started: (its `farm ps` row,
    the job's task)."""
    up.expect_notify("READY=1")
    (row,) = wait_for("a connected worker", lambda: up.workers("slow", "running"))
    with Client(up.addr) as client:
        task = client.submit("slow", "x", background=True)
    wait_for("the job started", (tmp_path / "started").exists)
    return row, task


def test_a_command_worker_stopped_mid_job_is_a_warning_naming_its_job(tmp_path: Path) -> None:
    # Past its grace, a draining command worker that still held a job got its stop signal
    # with a DEBUG line only, and its end read "was killed by SIGTERM after draining" at
    # INFO: `journalctl -p warning` never showed that a stop (a deploy, a scale-down)
    # broke off a job.
    up = slow_farm(tmp_path, grace=1)
    try:
        row, task = slow_job_started(up, tmp_path)
        assert farm_cli("scale", "slow=0", "--control", up.control).returncode == 0
        wait_for("the worker gone", lambda: not psutil.pid_exists(row["pid"]))
        line = wait_for(
            "the warning",
            lambda: next((r for r in up.read_log().splitlines() if "still runs after" in r), None),
        )
        assert (
            f"WARNING worker slow#0 cpu{row['cpu']} (pid {row['pid']}): job {task.handle}"
            " still runs after the 1s grace; SIGTERM" in line
        ), line
        # Its end then read "was killed by SIGTERM after draining", as if the drain had saved
        # the job: it says the job was cut off, as a Python worker's end does.
        end = wait_for(
            "its exit line",
            lambda: next(
                (r for r in up.read_log().splitlines() if f"(pid {row['pid']}) was " in r), None
            ),
        )
        assert re.search(
            rf"was killed by SIGTERM while draining \(did not drain in time; its job"
            rf" {re.escape(task.handle)} \(running [\d.]+s\) is cut off\)$",
            end,
        ), end
    finally:
        assert up.stop() == 0


def test_sigquit_stops_a_busy_command_worker_at_once(tmp_path: Path) -> None:
    # SIGQUIT before any SIGTERM drained a command worker as a stop does: its job ran on
    # for the pool's graceful_timeout (120 s here) before its stop signal, another before
    # SIGKILL, and `farm up` with it, though "SIGQUIT stops at once".
    up = slow_farm(tmp_path, grace=120)
    try:
        row, task = slow_job_started(up, tmp_path)
        up.signal(signal.SIGQUIT)
        assert up.proc.wait(20) == 0
        log = up.read_log()
        # Said where the worker's end is: its SIGKILL's warning, or, when the stop signal
        # that SIGQUIT sends first killed it already, its exit line, worded without "while
        # draining" since SIGQUIT drains nothing (lifecycle: the SIGTERM won the race in a CI run).
        worker = rf"worker slow#0 cpu{row['cpu']} \(pid {row['pid']}\)"
        assert re.search(
            rf"(WARNING killing {worker}: |INFO {worker} was killed by \w+ \()"
            rf"stopped at once \(SIGQUIT\); its job {re.escape(task.handle)} \(running [\d.]+s\)"
            " is cut off",
            log,
        ), log
        # Nor was it drained for 0 s first: "SIGTERM once it holds none, or after 0s", then
        # "still runs after the 0s grace", before the kill that SIGQUIT meant.
        assert "or after 0s" not in log and "0s grace" not in log, log
    finally:
        up.stop()


def test_a_deploy_whose_command_does_not_boot_says_why(tmp_path: Path) -> None:
    # `farm reload` (and the warning) said "the new process (pid N) exited with code 255;
    # the old one stays", and never why: the PHP fatal error was in the INFO lines only.
    serving = tmp_path / "serving.py"
    serving.write_text(SLOW_WORKER)
    broken = tmp_path / "broken.sh"
    broken.write_text(
        "echo 'PHP Fatal error:  Uncaught Error: Class \"Foo\" not found' >&2\nexit 255\n"
    )
    pool = """
        [functions.slow]
        command = {command}
        workers = 1
        """
    up = FarmUp(tmp_path, pool.format(command=f'["{sys.executable}", "{serving}", "{tmp_path}"]'))
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("a connected worker", lambda: up.workers("slow", "running"))
        up.write_config(pool.format(command=f'["sh", "{broken}"]'))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1, out.stdout + out.stderr
        why = "its last output: 'PHP Fatal error:  Uncaught Error: Class \"Foo\" not found'"
        assert f"exited with code 255 ({why}); the old one (pid {row['pid']}) stays" in out.stderr
        assert why in next(r for r in up.read_log().splitlines() if "WARNING restart:" in r)
        assert [r["pid"] for r in up.workers("slow")] == [row["pid"]]
    finally:
        assert up.stop() == 0


# A command worker whose job waits until the test removes the file it names, ignoring
# SIGTERM when asked to (argv[2] == "deaf"), as a PHP worker with pcntl_signal does.
HELD_WORKER = """\
import os, signal, sys, time
from pathlib import Path
import farm

if sys.argv[2] == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = farm.Worker(os.environ["FARM_SERVERS"])

@worker.function(os.environ["FARM_FUNCTION"])
def held(job):
    hold = Path(sys.argv[1], "hold")
    hold.touch()
    while hold.exists():
        time.sleep(0.02)
    return b"done by the command"

worker.work()
"""

PYTHON_POOL = """
    [functions.other]
    target = "workers.text:reverse"
    workers = 1
    """


def held_pool(tmp_path: Path, deaf: bool, *, name: str = "held", grace: float = 2) -> str:
    script = tmp_path / "held.py"
    script.write_text(HELD_WORKER)
    mode = "deaf" if deaf else "plain"
    return f"""
        [functions.{name}]
        command = ["{sys.executable}", "{script}", "{tmp_path}", "{mode}"]
        workers = 1
        graceful_timeout = {grace:g}
        """


def test_a_removed_command_pools_worker_is_drained_and_killed_past_its_grace(
    tmp_path: Path,
) -> None:
    # A reload that removed a command pool retired its workers with no grace: no drain (a
    # PHP worker got SIGTERM at once, mid-job) and no SIGKILL after it, so a worker that
    # ignores SIGTERM went on serving the removed function, and `farm stop` (systemctl stop)
    # waited for it for ever.
    # It drains with its own grace (4 s: room for the steps below), not the farm's (10 s):
    # the reload that removed the pool took its config, and the farm's went to its workers.
    up = FarmUp(tmp_path, PYTHON_POOL + held_pool(tmp_path, deaf=True, grace=4))
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("a connected worker", lambda: up.workers("held", "running"))
        with Client(up.addr) as client:
            task = client.submit("held", "x")
            wait_for("the job started", (tmp_path / "hold").exists)
            up.write_config(PYTHON_POOL)
            out = farm_cli("reload", "--control", up.control)
            assert out.returncode == 0, out.stdout + out.stderr
            wait_for("its drain", lambda: "the server hands it no more jobs" in up.read_log())
            assert "once it holds none, or after 4s" in up.read_log()
            assert psutil.pid_exists(row["pid"])
            (tmp_path / "hold").unlink()
            assert client.wait(task, timeout=10) == b"done by the command"
        wait_for("the deaf worker killed", lambda: not psutil.pid_exists(row["pid"]), timeout=15)
        assert "ignored SIGTERM, holding no job" in up.read_log()  # its job had ended
    finally:
        assert up.stop() == 0


def test_a_command_pool_made_a_python_target_finishes_its_jobs_first(tmp_path: Path) -> None:
    # The old command workers were retired with the new Python pool's grace, none: SIGTERM at
    # once, mid-job, and the job ran again on the new worker (here: the reversed argument).
    up = FarmUp(tmp_path, PYTHON_POOL + held_pool(tmp_path, deaf=False))
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("a connected worker", lambda: up.workers("held", "running"))
        with Client(up.addr) as client:
            task = client.submit("held", "abc")
            wait_for("the job started", (tmp_path / "hold").exists)
            up.write_config(
                PYTHON_POOL + '\n[functions.held]\ntarget = "workers.text:reverse"\nworkers = 1\n'
            )
            out = farm_cli("reload", "--control", up.control)
            assert out.returncode == 0, out.stdout + out.stderr
            wait_for("the Python worker", lambda: up.workers("held", "idle"))
            assert psutil.pid_exists(row["pid"])
            (tmp_path / "hold").unlink()
            assert client.wait(task, timeout=10) == b"done by the command"
        wait_for("the command worker gone", lambda: not psutil.pid_exists(row["pid"]))
    finally:
        assert up.stop() == 0


def test_a_wrappers_worker_serves_and_a_restart_drains_it(tmp_path: Path) -> None:
    # Only the command's own connections were looked at: a wrapper (`sh -c "php w.php; ..."`)
    # stayed "starting" while its worker served, and `farm restart` replaced it with no
    # drain (SIGTERM to its group at once, mid-job), or, in its first 10 s, not at all.
    pool = held_pool(tmp_path, deaf=False)
    command = pool.split("command = ", 1)[1].split("\n", 1)[0]
    argv = " ".join(json.loads(command))
    up = FarmUp(tmp_path, pool.replace(command, json.dumps(["sh", "-c", f"{argv}; echo ended"])))
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("the wrapper running", lambda: up.workers("held", "running"))
        with Client(up.addr) as client:
            task = client.submit("held", "x")
            wait_for("the job started", (tmp_path / "hold").exists)
            wait_for("its job seen", lambda: up.workers("held")[0]["job"] == task.handle)
            restart = subprocess.Popen(
                [sys.executable, "-m", "farm.cli", "restart", "held", "--control", up.control],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for("its drain", lambda: "the server hands it no more jobs" in up.read_log())
            (tmp_path / "hold").unlink()
            assert client.wait(task, timeout=10) == b"done by the command"
            out, err = restart.communicate(timeout=30)
            assert restart.returncode == 0, out + err
        wait_for("the old wrapper gone", lambda: not psutil.pid_exists(row["pid"]))
    finally:
        assert up.stop() == 0


# A command worker registering the function its argument names, whatever its pool serves.
NAMED_WORKER = """\
import os, sys
import farm

worker = farm.Worker(os.environ["FARM_SERVERS"])
worker.register(sys.argv[1], lambda job: b"served by " + sys.argv[1].encode())
worker.work()
"""


def test_a_deploy_whose_command_registers_another_function_keeps_the_old_workers(
    tmp_path: Path,
) -> None:
    # A command worker served once it connected, whatever it registered: a new PHP script
    # registering "wrong" instead of "rev" was reported "2/2 replaced" (exit 0), the old
    # workers were retired, and rev's jobs queued for ever with no worker.
    script = tmp_path / "named.py"
    script.write_text(NAMED_WORKER)
    pool = """
        [functions.rev]
        command = ["{python}", "{script}", "{name}"]
        workers = 2
        """

    def deploy(name: str) -> None:  # a low boot_timeout: the new workers never serve
        up.write_config(pool.format(python=sys.executable, script=script, name=name))
        text = up.config.read_text().replace("graceful_timeout = 10", "boot_timeout = 3")
        up.config.write_text(text)

    up = FarmUp(tmp_path, "", start=False)
    deploy("rev")
    up.start()
    try:
        up.expect_notify("READY=1")
        wait_for("2 serving workers", lambda: len(up.workers("rev", "running")) == 2)
        old = sorted(r["pid"] for r in up.workers("rev"))
        deploy("wrong")
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1, out.stdout + out.stderr
        # "so far": within 3 s its registration is not final (it asked for jobs with it, and
        # REGISTRATION_SETTLE, 5 s, has not passed); the reload's deadline names it so.
        assert re.search(
            r"did not serve within 3s of its start \(registered wrong( so far)?, not rev\)",
            out.stderr,
        ), out.stderr
        assert "the old one (pid" in out.stderr
        assert sorted(r["pid"] for r in up.workers("rev")) == old
        assert all(r["state"] == "running" for r in up.workers("rev"))
        with Client(up.addr) as client:
            assert client.call("rev", "x", timeout=10) == b"served by rev"
    finally:
        assert up.stop() == 0
