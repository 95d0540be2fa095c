"""The supervisor's metrics endpoint (``[supervisor] metrics``) at the descriptor limit."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.helpers.farmproc import FarmUp

pytestmark = pytest.mark.timeout(60)

ONE_WORKER = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def test_a_failing_accept_rests_the_listener_not_spins_it(tmp_path: Path) -> None:
    # accept() failing with EMFILE left the connection queued and the listener readable:
    # socketserver passed over the error and selected again, a core at 100% for as long.
    up = FarmUp(tmp_path, ONE_WORKER)
    held = socket.socket()
    try:
        up.expect_notify("READY=1")
        assert status_of(up.metrics_url) == 200
        supervisor = psutil.Process(up.proc.pid)
        soft, hard = supervisor.rlimit(psutil.RLIMIT_NOFILE)
        supervisor.rlimit(psutil.RLIMIT_NOFILE, (3, hard))  # below all it holds: no open
        try:
            held.connect(("127.0.0.1", up.metrics_port))  # queued: accept() cannot take it
            time.sleep(0.5)  # the spin, if any, under way: what is measured is its cost
            before = cpu_seconds(supervisor)
            time.sleep(2.0)
            spent = cpu_seconds(supervisor) - before
        finally:
            supervisor.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        assert spent < 0.5, f"the supervisor spent {spent:.2f} s of CPU in 2 s"
        held.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # taken once a descriptor is free
        held.settimeout(10)
        assert held.recv(64).startswith(b"HTTP/1.0 200"), up.read_log()
        said = [line for line in up.read_log().splitlines() if "metrics: cannot accept" in line]
        assert len(said) == 1 and "Too many open files" in said[0], said
    finally:
        held.close()
        assert up.stop() == 0, up.log_path.read_text()


#: The supervisor with every import failing as at the descriptor limit (its file cannot be
#: opened) while the file named by $REFUSE_IMPORTS is there.
REFUSES_IMPORTS = """
import errno, os, sys
flag = os.environ["REFUSE_IMPORTS"]
def refuse(event, args):
    if event == "open" and str(args[0]).endswith((".py", ".pyc")) and os.path.exists(flag):
        raise OSError(errno.EMFILE, "Too many open files", args[0])
sys.addaudithook(refuse)
from farm.cli import main; main()
"""


def test_a_scrape_imports_nothing_that_the_limit_could_refuse(tmp_path: Path) -> None:
    # A scrape's first collect imported prometheus_client.core: at the limit, a 500.
    refuse = tmp_path / "refuse-imports"
    up = FarmUp(tmp_path, ONE_WORKER, start=False, extra_env={"REFUSE_IMPORTS": str(refuse)})
    up.code = REFUSES_IMPORTS
    up.start()
    try:
        up.expect_notify("READY=1")
        refuse.touch()
        try:
            assert status_of(up.metrics_url) == 200, up.read_log()
        finally:
            refuse.unlink()
    finally:
        assert up.stop() == 0, up.log_path.read_text()
