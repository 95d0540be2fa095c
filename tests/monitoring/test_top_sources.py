"""`farm top` against a real `farm up` when what it reads fails or is not the farm's: a job
server that does not answer, hangs or restarts costs only the server's numbers (shown
unknown, not 0; a restart's counters read as a reset), and an endpoint that could not be
bound, or another program's, is named as such."""

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
from farm.errors import JobException
from tests.helpers.farmproc import FarmUp
from tests.helpers.scraping import get, scrape
from tests.helpers.toprun import ENV, FAILED, POOLS, farm_top, rows_of
from tests.helpers.waiting import wait_for


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


class _OtherEndpoint(http.server.BaseHTTPRequestHandler):
    """An HTML page at /page, another program's metrics (Prometheus's own) at /metrics, a
    404 at /nowhere."""

    def do_GET(self) -> None:
        if self.path == "/nowhere":
            self.send_error(404)
            return
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
        # An HTTP error is an answer too: it read "did not answer (<HTTPError 404 ...>)".
        status = farm_top(up, "--once", "--metrics", f"{base}/nowhere")[0]
        assert f"{base}/nowhere answered HTTP 404 (is the path /metrics?)" in status, status
        # The processes are still shown, their numbers unknown.
        assert (
            rows_of(farm_top(up, "--once", "--metrics", f"{base}/page"), "FUNCTION")["alpha"][1]
            == "-"
        )
    finally:
        other.shutdown()
        other.server_close()
        up.stop()
