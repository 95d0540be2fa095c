"""`farm top` against a real `farm up`: one frame shows every function and process with
the endpoint's numbers; the live view outlives a killed worker and the farm itself."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import farm
from farm.client.admin import admin_query
from farm.errors import JobException
from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer
from tests.helpers.scraping import get, scrape
from tests.helpers.waiting import wait_for

POOLS = """
[functions.alpha]
target = "tests.helpers.monitored:work"
workers = 2

[functions.beta]
target = "tests.helpers.monitored:work"
workers = 1
"""

ENV = dict(os.environ, COLUMNS="160", LINES="60", PYTHONPATH=str(ROOT))
#: The function table's FAILED cell, before REFUSED and DROPPED.
FAILED = -3


def farm_top(up: FarmUp, *args: str, env: dict[str, str] = ENV) -> list[str]:
    argv = [sys.executable, "-m", "farm.cli", "top", "--control", up.control, *args]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    return run.stdout.splitlines()


def rows_of(lines: list[str], first: str) -> dict[str, list[str]]:
    """The table under the header line that starts with ``first``, keyed by the first cell."""
    start = next(
        i for i, line in enumerate(lines) if line.replace("▼", "").strip().startswith(first)
    )
    out: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        out.setdefault(cells[0], cells)
    return out


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


@pytest.mark.timeout(90)
def test_the_servers_numbers_are_unknown_not_0_while_it_does_not_answer(tmp_path: Path) -> None:
    # The supervisor still answers a scrape when its server does not (farm_server_up 0, e.g.
    # while it restarts): top drew that as 0 queued, 0 workers, 0 failed, with no word.
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 2, "beta": 1})
        with farm.Client(up.addr) as client, pytest.raises(JobException):
            client.call("alpha", "raise")
        assert rows_of(farm_top(up, "--once"), "FUNCTION")["alpha"][FAILED] == "1"
        # The supervisor asks the server on its Unix socket: moved away, it gets no answer
        # at once (the server and its workers' connections carry on).
        away = tmp_path / "moved.sock"
        up.unix.rename(away)
        wait_for("farm_server_up 0", lambda: get(scrape(up.metrics_url), "farm_server_up") == 0)
        lines = farm_top(up, "--once")
        assert "job server did not answer" in lines[0]
        alpha = rows_of(lines, "FUNCTION")["alpha"]
        # QUEUED RUNNING WORKERS unknown, IDLE 2 (the supervisor's own), ..., FAILED REFUSED
        # DROPPED unknown
        assert alpha[1:4] == ["-", "-", "-"] and alpha[4] == "2" and alpha[-3:] == ["-"] * 3
        away.rename(up.unix)
        wait_for("farm_server_up 1", lambda: get(scrape(up.metrics_url), "farm_server_up") == 1)
        assert rows_of(farm_top(up, "--once"), "FUNCTION")["alpha"][FAILED] == "1"
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_a_hung_server_costs_top_only_the_servers_numbers(tmp_path: Path) -> None:
    # The supervisor waits 2 s for its server's part of a scrape; top gave up on the whole
    # endpoint at 2 s too, so a hung server read as "the metrics endpoint did not answer".
    up = FarmUp(tmp_path, POOLS)
    server = None
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 2, "beta": 1})
        server = next(r["pid"] for r in up.ps() if r["function"] == "server")
        os.kill(server, signal.SIGSTOP)
        lines = farm_top(up, "--once")
        assert "job server did not answer" in lines[0], lines[0]
        assert rows_of(lines, "FUNCTION")["alpha"][1] == "-"
    finally:
        if server is not None:
            os.kill(server, signal.SIGCONT)
        up.stop()


@pytest.mark.timeout(90)
def test_jobs_per_second_across_a_server_restart_count_the_new_servers_answers(
    tmp_path: Path,
) -> None:
    # A restarted server counts from 0, below the reading before it: top took the difference
    # as nothing (max 0), and showed 0.0 jobs/s for the 5 s after a restart however busy the
    # farm was. Prometheus reads a counter that went down as a reset; so does top now.
    from farm.cli.top import Sampler

    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 2, "beta": 1})
        with farm.Client(up.addr) as client:
            for _ in range(20):
                client.call("alpha", "ok")
        sampler = Sampler(up.control)
        before = sampler.sample()
        server = next(r["pid"] for r in up.ps() if r["function"] == "server")
        os.kill(server, signal.SIGKILL)

        def served_again() -> bool:
            m = scrape(up.metrics_url, check=False)
            start = get(m, "farm_server_start_time_seconds")
            restarted = start not in (
                0,
                get(before.metrics or {}, "farm_server_start_time_seconds"),
            )
            return restarted and get(m, "farm_workers", function="alpha") == 2

        wait_for("the restarted server, alpha's workers back on it", served_again, timeout=30)
        with farm.Client(up.addr) as client:
            for _ in range(5):
                client.call("alpha", "ok")
        after = sampler.sample()
        (alpha,) = [row for row in sampler.functions(after) if row.name == "alpha"]
        assert alpha.rate == pytest.approx(5 / (after.when - before.when))
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_an_endpoint_that_could_not_be_bound_is_not_called_off(tmp_path: Path) -> None:
    # `farm up` goes on without its endpoint when the port is taken (one warning in its
    # log); top said "metrics: off ([supervisor] metrics)", sending the operator to a
    # config that asked for them, and `farm ps --json` showed "metrics": null, no why.
    up = FarmUp(tmp_path, POOLS, start=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", up.metrics_port))
        taken.listen()
        up.start()
        try:
            up.expect_notify("READY=1")
            status = farm_top(up, "--once")[0]
            assert "off" not in status, status
            assert f"cannot serve on 127.0.0.1:{up.metrics_port}" in status, status
            assert "Address already in use" in status, status
            ps = subprocess.run(
                [sys.executable, "-m", "farm.cli", "ps", "--json", "--control", up.control],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=60,
            )
            assert ps.returncode == 0, ps.stderr
            (row,) = [r for r in json.loads(ps.stdout) if r["function"] == "supervisor"]
            assert row["metrics"] is None
            assert row["metrics_error"].startswith(f"cannot serve on 127.0.0.1:{up.metrics_port}")
        finally:
            up.stop()


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


class _OtherEndpoint(http.server.BaseHTTPRequestHandler):
    """An HTML page at /page, another program's metrics (Prometheus's own) at /metrics."""

    def do_GET(self) -> None:
        if self.path == "/page":
            body, kind = b"<!DOCTYPE html><html><body>Grafana</body></html>\n", "text/html"
        else:
            body = b"# TYPE prometheus_build_info gauge\nprometheus_build_info 1\n"
            kind = "text/plain; version=0.0.4"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(90)
def test_a_wrong_endpoint_is_named_as_one_not_as_remote_servers_or_silence(tmp_path: Path) -> None:
    # --metrics at Prometheus's own /metrics read "no job server's numbers here (its job
    # servers are remote)"; at an HTML page "did not answer (ValueError('invalid metric
    # name:<!DOCTYPE html>'))", though it answered.
    up = FarmUp(tmp_path, POOLS)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherEndpoint)
    serving = threading.Thread(target=other.serve_forever, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{other.server_address[1]}"
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 2, "beta": 1})
        status = farm_top(up, "--once", "--metrics", f"{base}/metrics")[0]
        assert f"{base}/metrics serves no farm metrics" in status, status
        assert "remote" not in status, status
        status = farm_top(up, "--once", "--metrics", f"{base}/page")[0]
        assert f"{base}/page answered with something that is not Prometheus text" in status
        assert "did not answer" not in status, status
        # The processes are still shown, their numbers unknown.
        assert (
            rows_of(farm_top(up, "--once", "--metrics", f"{base}/page"), "FUNCTION")["alpha"][1]
            == "-"
        )
    finally:
        other.shutdown()
        other.server_close()
        up.stop()
