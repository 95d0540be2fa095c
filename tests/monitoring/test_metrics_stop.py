"""A stop with scrapers connected to a metrics endpoint is a clean stop: no traceback.

A Prometheus that connects between scrapes, or any local user's idle connection, is
open on the endpoint when the operator stops the server. asyncio's stream callback of
Python 3.11 logged each such scrape's task, cancelled as the loop ended, as "Exception in
callback" with two tracebacks of CancelledError, on every stop.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import free_ports, wait_connectable

#: What an operator must not see on a stop.
NOISE = ("Traceback", "CancelledError", "Task was destroyed", "Exception in callback")


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return reply.read()


def hold_scrapers(port: int) -> list[socket.socket]:
    """Two connections the endpoint is answering when the stop comes: one that sent
    nothing yet, one halfway through its request. A whole scrape after them returns once
    the endpoint has taken them up (it answers its connections in the order they came)."""
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    partial = socket.create_connection(("127.0.0.1", port), timeout=10)
    partial.sendall(b"GET /metr")
    scrape(port)
    return [idle, partial]


@pytest.mark.timeout(60)
def test_the_server_stops_cleanly_with_scrapers_connected(tmp_path: Path) -> None:
    port, metrics = free_ports(2)
    log = tmp_path / "stderr"
    argv = [sys.executable, "-m", "farm.server", "--port", str(port), "--store", "none"]
    argv += ["--metrics", f"127.0.0.1:{metrics}"]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(argv, cwd=ROOT, stderr=stderr)
    held: list[socket.socket] = []
    try:
        # The metrics endpoint listens after the job port (farm.server.app): a CI run's
        # scrapers found it not there yet.
        wait_connectable(f"127.0.0.1:{metrics}", proc)
        held = hold_scrapers(metrics)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        # The stop closed the scrapers' connections: each reads its end.
        for sock in held:
            assert sock.recv(100) == b""
    finally:
        for sock in held:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text(errors="replace")
    assert not [word for word in NOISE if word in out], out


@pytest.mark.timeout(90)
def test_farm_up_stops_cleanly_with_scrapers_connected(tmp_path: Path) -> None:
    # The supervisor's endpoint is another (threads, farm.pools.metricsendpoint): its stop, and its
    # server child's, must be as quiet.
    pools = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'
    up = FarmUp(tmp_path, pools, extra_env={"FARM_KEY_FILE": str(tmp_path / "key")})
    held: list[socket.socket] = []
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        held = hold_scrapers(up.metrics_port)
    finally:
        code = up.stop()
        for sock in held:
            sock.close()
    out = up.log_path.read_text(errors="replace")
    assert code == 0, out
    assert "supervisor stopped" in out
    assert not [word for word in NOISE if word in out], out
