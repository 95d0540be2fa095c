"""`farm ps` while a worker runs a job of a job server that has died since.

Found in a review: the supervisor restarted its killed server, and `farm ps` went on showing
the worker busy with the dead server's job, as if it were serving, until the job ended. The
worker reads nothing while its job runs, so it cannot tell; the supervisor can.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from farm.client import Client
from farm.client.admin import admin_query
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.gate import Gate
from tests.helpers.servers import start_farm_server
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

HELD = "from tests.helpers.calls import wait_gate\n\n\ndef job(j):\n    wait_gate(j.text)\n"


def test_a_job_whose_server_died_is_shown_as_such(tmp_path: Path) -> None:
    (tmp_path / "held.py").write_text(HELD)
    up = FarmUp(tmp_path, '[functions.held]\ntarget = "held:job"\nworkers = 1\n')
    with Gate(tmp_path / "gate") as gate:
        try:
            up.expect_notify("READY=1")
            up.wait_idle({"held": 1})
            client = Client(up.addr)
            try:
                client.submit("held", gate.path, background=True)
            finally:
                client.close()
            (busy,) = wait_for("the worker busy", lambda: up.workers("held", "busy"))
            assert busy["job"] and busy["server_gone"] is False
            (server,) = [r for r in up.ps() if r["function"] == "server"]
            os.kill(server["pid"], signal.SIGKILL)

            def new_server() -> list[dict]:
                rows = up.ps()
                return [r for r in rows if r["function"] == "server" and r["restarts"] == 1]

            wait_for("the server restarted", new_server)
            (row,) = up.workers("held")
            assert (row["state"], row["job"], row["server_gone"]) == ("busy", busy["job"], True)
            shown = farm_cli("ps", "--control", up.control)
            assert f"{busy['job']} (" in shown.stdout and "server gone)" in shown.stdout
            gate.open()
            # Its job ended for nobody: it reconnects and serves the new server.
            (idle,) = wait_for("the worker idle", lambda: up.workers("held", "idle"))
            assert idle["pid"] == busy["pid"] and not idle["server_gone"]
        finally:
            assert up.stop() == 0


def test_a_job_whose_remote_server_died_is_shown_as_such(tmp_path: Path) -> None:
    # Only the local server's death was seen: a worker busy with the job of a remote server
    # ([supervisor] servers) that had died went on showing as busy, as if it served.
    (tmp_path / "held.py").write_text(HELD)
    remote = start_farm_server()
    up = FarmUp(tmp_path, '[functions.held]\ntarget = "held:job"\nworkers = 1\n', start=False)
    both = f'[supervisor]\nlocal_server = true\nservers = ["{remote.addr}"]\n'
    up.config.write_text(up.config.read_text().replace("[supervisor]\n", both))
    up.start()
    with Gate(tmp_path / "gate") as gate:
        try:
            up.expect_notify("READY=1")
            up.wait_idle({"held": 1})
            client = Client(remote.addr)  # the worker's second server
            try:
                client.submit("held", gate.path, background=True)
            finally:
                client.close()
            (busy,) = wait_for("the worker busy", lambda: up.workers("held", "busy"))
            assert busy["job"] and busy["server_gone"] is False
            remote.proc.kill()
            remote.proc.wait()
            (row,) = wait_for(
                "its job's server seen gone",
                lambda: [r for r in up.workers("held") if r["server_gone"]],
            )
            assert (row["state"], row["job"]) == ("busy", busy["job"])
            shown = farm_cli("ps", "--control", up.control)
            assert f"{busy['job']} (" in shown.stdout and "server gone)" in shown.stdout
            gate.open()
            (idle,) = wait_for("the worker idle", lambda: up.workers("held", "idle"))
            assert idle["pid"] == busy["pid"] and not idle["server_gone"]
        finally:
            assert up.stop() == 0
            remote.stop()


def test_a_job_server_restart_is_one_warning_not_two_a_worker(tmp_path: Path) -> None:
    # Each worker warned twice at a restart of the server ("closed the connection;
    # reconnecting", "unreachable ...; retrying") beside the supervisor's own "was killed;
    # restarting now": 74 lines in `journalctl -p warning` for one event on 37 workers.
    up = FarmUp(
        tmp_path, '[functions.rev]\ntarget = "tests.helpers.serving:reverse"\nworkers = 2\n'
    )
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"rev": 2})

        def both_serve() -> bool:
            try:  # refused until the new server listens
                return "rev\t0\t0\t2" in admin_query(up.addr, "status", timeout=5)
            except OSError:
                return False

        # Registered with the server, not only up: a worker idle in farm ps may not have
        # connected yet, and then its first word is "unreachable" (seen under load).
        wait_for("both workers registered", both_serve, timeout=20)
        (server,) = [r for r in up.ps() if r["function"] == "server"]
        os.kill(server["pid"], signal.SIGKILL)
        lost = r"farm-worker rev#\d\[\d+\] [A-Z]+ job server \S+ .*; reconnecting$"
        wait_for(
            "both workers to say the server went",
            lambda: len(re.findall(lost, up.read_log(), re.M)) >= 2,  # 2: asserted below
        )

        wait_for("both workers serving the new server", both_serve, timeout=20)
        with Client(up.addr) as client:
            assert client.call("rev", "ab", timeout=10) == b"ba"
        log = up.read_log()
        assert re.search(r"WARNING job server \(pid \d+\) was killed by SIGKILL", log), log
        warned = [line for line in log.splitlines() if re.search(r"farm-worker.* WARNING ", line)]
        assert not warned, warned
        assert len(re.findall(lost.replace("[A-Z]+", "INFO"), log, re.M)) == 2, log
    finally:
        assert up.stop() == 0
