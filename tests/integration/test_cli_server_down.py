"""`farm status` and `farm jobs` while the farm runs but its job server does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.pools.control import ControlUnavailable
from tests.helpers.bigstore import large_store
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import free_port
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def test_status_says_the_farm_runs_and_its_server_restarts(tmp_path: Path) -> None:
    # The store turned unreadable and the server was killed: the supervisor restarted it
    # with backoff, each start refused. `farm status` said "no job server listens there: is
    # the farm up?" to an operator whose farm was up, its supervisor saying why in the log.
    store = tmp_path / "queue.db"
    pool = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'
    up = FarmUp(tmp_path, pool, store=store)
    try:
        up.expect_notify("READY=1")
        up.server_backing_off(b"not a database\n")
        for command in ("status", "jobs"):
            out = farm_cli(command, "--config", str(up.config))
            assert out.returncode == 1, out.stdout
            said = out.stderr
            assert "is the farm up?" not in said, said
            assert (
                f"the farm runs (supervisor pid {up.proc.pid}), but its job server is not up"
                in said
            ), said
            assert "exited with code 2" in said and "the log says why" in said, said
            assert len(said.strip().splitlines()) == 1, said
        # $FARM_SERVERS names another server (no --config): it, not the farm's, was asked.
        env = dict(os.environ, FARM_CONFIG=str(up.config), FARM_SERVERS="127.0.0.1:1")
        other = subprocess.run(
            [sys.executable, "-c", "from farm.cli import main; main()", "status"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert other.returncode == 1 and "127.0.0.1:1" in other.stderr, other.stderr
        assert "the farm runs" not in other.stderr and "is the farm up?" in other.stderr
    finally:
        assert up.stop() == 0


def test_status_during_the_store_s_replay_says_so_not_the_log(tmp_path: Path) -> None:
    # At every start the server replays its store before it listens (40 s for a large one):
    # `farm status` said "not up: starting, restarted 0 times; the log says why, e.g.
    # journalctl -u farm -p warning", sending the operator to a log with nothing to say.
    store = tmp_path / "queue.db"
    large_store(store, jobs=300_000)  # seconds of replay, longer than a `farm status`
    up = FarmUp(tmp_path, "", store=store)
    try:

        def replaying() -> bool:
            try:
                rows = up.ps()
            except ControlUnavailable:  # its control socket is not made yet
                return False
            return any(r["function"] == "server" and r["state"] == "starting" for r in rows)

        wait_for("the job server started", replaying)
        out = farm_cli("status", "--config", str(up.config))
        (row,) = [r for r in up.ps() if r["function"] == "server"]
        # Still replaying after the command: it was while the command asked.
        assert (row["state"], row["restarts"], row["replaying"]) == ("starting", 0, True), row
        assert out.returncode == 1, out.stdout
        said = out.stderr
        assert "its job server is not up: starting (replaying its store; farm ps)" in said, said
        assert "the log says why" not in said and "0 times" not in said, said
        up.expect_notify("READY=1", timeout=60)
    finally:
        assert up.stop() == 0


def test_a_pool_named_server_is_not_taken_for_the_farm_s_job_server(tmp_path: Path) -> None:
    # With no local server (servers = [...]), `farm status` found "the server" by its row's
    # function alone: a pool named "server" was taken for it, and the farm was said to run
    # with "its job server not up", in the pool's state, though it has none of its own.
    remote = f"127.0.0.1:{free_port()}"  # nothing listens: status is refused
    pool = '[functions.server]\ncommand = ["sleep", "1000"]\nworkers = 1\n'
    up = FarmUp(tmp_path, pool, supervisor=f'servers = ["{remote}"]\nready_wait = 1')
    try:
        up.expect_notify("READY=1")
        assert [r["slot"] for r in up.ps() if r["function"] == "server"] == [0]  # the pool's
        out = farm_cli("status", "--config", str(up.config))
        assert out.returncode == 1, out.stdout
        assert "the farm runs" not in out.stderr and "is the farm up?" in out.stderr, out.stderr
    finally:
        assert up.stop() == 0


def test_a_pool_named_supervisor_is_not_given_the_supervisor_s_metrics(tmp_path: Path) -> None:
    # `farm ps --json` gave the supervisor's metrics fields to every row whose function was
    # "supervisor": a pool of that name's too.
    pool = '[functions.supervisor]\ncommand = ["sleep", "1000"]\nworkers = 1\n'
    up = FarmUp(tmp_path, pool, supervisor="ready_wait = 1")
    try:
        up.expect_notify("READY=1")
        out = farm_cli("ps", "--json", "--config", str(up.config))
        assert out.returncode == 0, out.stderr
        rows = [r for r in json.loads(out.stdout) if r["function"] == "supervisor"]
        assert sorted(("metrics" in r, r["slot"]) for r in rows) == [(False, 0), (True, None)]
    finally:
        assert up.stop() == 0
