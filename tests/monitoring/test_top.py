"""`farm top` against a real `farm up`: one frame shows every function and process with
the endpoint's numbers (a command pool's under the function it serves, a pipe's frame
uncut); the live view outlives a killed worker and the farm itself. When what top reads
fails or is not the farm's: test_top_sources.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import farm
from farm.client.admin import admin_query
from farm.errors import JobException
from farm.protocol import PacketType as T
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer
from tests.helpers.scraping import get, scrape
from tests.helpers.toprun import ENV, FAILED, POOLS, farm_top, rows_of
from tests.helpers.waiting import wait_for


@pytest.mark.timeout(90)
def test_once_shows_every_function_and_process_with_the_endpoints_numbers(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 2, "beta": 1})
        with farm.Client(up.addr) as client:
            for text in ("a", "b", "c", "d"):
                client.call("alpha", text)
            with pytest.raises(JobException):
                client.call("beta", "raise")
            client.submit("nobody", "x", background=True)
        # A submit refused (the queue is full) and a job dropped (its client left): neither
        # was on the view, nor counted in FAILED.
        assert admin_query(f"unix:{up.unix}", "maxqueue nobody 1", timeout=10) == "OK\r\n"
        refused, dropped = Peer(up.addr), Peer(up.addr)
        refused.send(T.SUBMIT_JOB_BG, "nobody", "", "y")
        assert refused.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
        refused.close()
        dropped.send(T.SUBMIT_JOB, "left", "", "z")
        dropped.expect(T.JOB_CREATED)
        dropped.close()
        wait_for(
            "the job whose client left dropped",
            lambda: get(
                scrape(up.metrics_url),
                "farm_jobs_dropped_total",
                function="other",
                priority="normal",
            ),
        )
        lines = farm_top(up, "--once")
        m = scrape(up.metrics_url, check=False)
        functions = rows_of(lines, "FUNCTION")
        assert set(functions) == {"alpha", "beta", "other"}
        for name, cells in functions.items():
            _, queued, running, workers, idle, busy, _rate, _p50, _p99, failed, *unanswered = cells
            priorities = ("high", "normal", "low")
            assert int(queued) == sum(
                get(m, "farm_jobs_queued", function=name, priority=p) for p in priorities
            )
            assert int(workers) == get(m, "farm_workers", function=name)
            assert int(running) == get(m, "farm_jobs_running", function=name)
            assert int(failed) == sum(
                get(m, f"farm_jobs_{kind}_total", function=name, priority=p)
                for kind in ("failed", "exceptions")
                for p in priorities
            )
            assert [int(n) for n in unanswered] == [
                sum(
                    v
                    for (n, labels), v in m.items()
                    if n == f"farm_jobs_{kind}_total" and ("function", name) in labels
                )
                for kind in ("refused", "dropped")
            ]
        assert functions["other"][1] == "1"  # the job nobody serves
        assert functions["other"][-2:] == ["1", "1"]  # refused, dropped
        assert functions["beta"][FAILED] == "1"
        assert functions["alpha"][4:6] == ["2", "0"]  # idle, busy

        processes = {r["pid"]: r for r in up.ps()}
        shown = rows_of(lines, "PID")
        assert set(shown) == {str(pid) for pid in processes}
        for pid, row in processes.items():
            cells = shown[str(pid)]
            assert cells[1] == row["function"]
            assert cells[-2] == str(row["jobs"]) and cells[-1] == str(row["restarts"])
    finally:
        up.stop()


def test_once_into_a_pipe_cuts_no_cell(tmp_path: Path) -> None:
    # Piped to a file or to grep (no terminal, and no COLUMNS, as in a cron job or a
    # journal), the frame was drawn 80 columns wide: "a_pool_with_a_long_name" came out
    # as "a_poo…", and the numbers and headers past the width cut the same way.
    name = "a_pool_with_a_long_name"
    up = FarmUp(tmp_path, POOLS.replace("alpha", name))
    try:
        up.expect_notify("READY=1")
        up.wait_idle({name: 2, "beta": 1})
        env = {k: v for k, v in ENV.items() if k not in ("COLUMNS", "LINES")}
        lines = farm_top(up, "--once", env=env)
        assert not [line for line in lines if "…" in line], "\n".join(lines)
        functions = rows_of(lines, "FUNCTION")
        assert set(functions) == {name, "beta"}
        assert len(functions[name]) == 12  # every column, none folded onto a next line
        assert set(rows_of(lines, "PID")) == {str(r["pid"]) for r in up.ps()}
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_the_live_view_survives_a_killed_worker_and_the_farm_stopping(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, POOLS)
    out = tmp_path / "top.out"
    try:
        up.expect_notify("READY=1")
        workers = up.wait_idle({"alpha": 2, "beta": 1})
        argv = [sys.executable, "-m", "farm.cli", "top", "--control", up.control]
        with open(out, "wb") as sink:  # no terminal: each frame is printed in turn
            top = subprocess.Popen(
                [*argv, "--interval", "0.2"], stdout=sink, stderr=subprocess.PIPE, env=ENV
            )
        wait_for("a first frame", lambda: "FUNCTION" in out.read_text())
        victim = next(r["pid"] for r in workers if r["function"] == "beta")
        os.kill(victim, signal.SIGKILL)
        successor = wait_for(
            "the slot's new worker",
            lambda: [r["pid"] for r in up.workers("beta", "idle") if r["pid"] != victim],
            timeout=30,
        )[0]
        wait_for("a frame with the new worker", lambda: f"{successor} " in out.read_text())
        assert top.poll() is None, "the view goes on after a worker died"
        assert up.stop() == 0
        _, err = top.communicate(timeout=30)
        assert top.returncode == 0, err
        assert b"Traceback" not in err
        assert "the farm stopped" in out.read_text()
    finally:
        up.stop()
        if "top" in locals() and top.poll() is None:
            top.kill()
            top.wait()


def test_a_farm_that_is_not_running_is_one_line_and_exit_1(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "farm.cli", "top", "--control", str(tmp_path / "none.sock")]
    run = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=60, input="")
    assert run.returncode == 1
    assert run.stderr.startswith("farm: ") and "Traceback" not in run.stderr


# A command worker (any language; Python here) holding its job until the test stops the farm.
HOLDS_ITS_JOB = """\
import os, sys, time
from pathlib import Path
import farm

worker = farm.Worker(os.environ["FARM_SERVERS"])

@worker.function(os.environ["FARM_FUNCTION"])
def hold(job):
    Path(sys.argv[1], "started").touch()
    time.sleep(60)

worker.work()
"""


@pytest.mark.timeout(90)
def test_a_command_pool_is_counted_under_the_function_it_serves(tmp_path: Path) -> None:
    # A PHP pool `php_rev` with function = "reverse" had a row of its own, `php_rev`, with no
    # queue and no workers, while the row of `reverse` counted none of its processes; and a
    # command worker (state "running") holding a job was neither idle nor busy anywhere.
    script = tmp_path / "holds.py"
    script.write_text(HOLDS_ITS_JOB)
    up = FarmUp(
        tmp_path,
        f"""
        [functions.php_rev]
        command = ["{sys.executable}", "{script}", "{tmp_path}"]
        function = "rev"
        workers = 2
        graceful_timeout = 1
        """,
    )
    try:
        up.expect_notify("READY=1")
        wait_for("two connected workers", lambda: len(up.workers("php_rev", "running")) == 2)
        with farm.Client(up.addr) as client:
            client.submit("rev", "x", background=True)
        wait_for("the job started", (tmp_path / "started").exists)
        functions = rows_of(farm_top(up, "--once"), "FUNCTION")
        assert set(functions) == {"rev"}
        _, queued, running, workers, idle, busy, *_ = functions["rev"]
        assert (queued, running, workers, idle, busy) == ("0", "1", "2", "1", "1")
    finally:
        up.stop()
