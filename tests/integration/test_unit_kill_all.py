"""`systemctl kill farm`: SIGTERM to every process of the unit at once (--kill-whom=all,
its default). The farm stops as `systemctl stop` stops it: the supervisor drains its
workers, whose jobs in hand finish and are answered, then it stops the job server."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import psutil
import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

#: A job that waits at the gate its data names, then counts its run in runs.txt beside it.
COUNTED_AT_GATE = """
from pathlib import Path

from tests.helpers.calls import wait_gate

def counted(job):
    wait_gate(job.text)
    with open(Path(job.text).with_name("runs.txt"), "a") as runs:
        runs.write("ran\\n")
    return b"done"
"""


def answered(up: FarmUp, server: int) -> bool:
    try:
        gone = psutil.Process(server).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        gone = True
    return gone or "SIGTERM left to farm up" in up.read_log()


def test_sigterm_to_every_process_of_the_farm_lets_the_job_in_hand_finish_once(
    tmp_path: Path,
) -> None:
    # The job server stopped at once on its SIGTERM, before the draining worker's answer:
    # the worker logged "write failed: Broken pipe", and the background job, done, stayed
    # in the store and ran again at the next start.
    (tmp_path / "counting.py").write_text(COUNTED_AT_GATE)
    store = tmp_path / "queue.db"
    up = FarmUp(
        tmp_path, '[functions.counted]\ntarget = "counting:counted"\nworkers = 1\n', store=store
    )
    gate = Gate(tmp_path / "gate")
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"counted": 1})
        with Client(up.addr, timeout=10) as client:
            client.submit("counted", gate.path, background=True)
        gate.arrived(1, timeout=15)
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        farm = [up.proc.pid, *(p.pid for p in psutil.Process(up.proc.pid).children(True))]
        assert len(farm) == 3 and server in farm, farm  # the supervisor, server and worker
        for pid in farm:
            os.kill(pid, signal.SIGTERM)
        up.expect_notify("STOPPING=1")
        # The job in hand ends once the server has acted on its SIGTERM: stopped (and gone),
        # or said that it leaves the stop to the supervisor.
        wait_for("the job server's answer to its SIGTERM", lambda: answered(up, server), 10)
        gate.open()
        assert up.proc.wait(30) == 0, up.read_log()
        log = up.read_log()
        assert (tmp_path / "runs.txt").read_text() == "ran\n"
        db = sqlite3.connect(store)
        try:
            left = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        finally:
            db.close()
        assert left == 0, f"the job it finished is still stored; log:\n{log}"
        assert "Broken pipe" not in log, log
    finally:
        gate.open()
        up.stop()
