"""Jobs running when the farm goes down. `farm stop` drains each worker and kills it past
its grace while the server runs: the death counts against ``job_retries`` as any other
(``job_retries = 1`` is at most once), is logged as a stop, not as a poison job, and with
retries left the background job stays in the store and runs at the next start. When the
supervisor itself dies, its server goes down with the workers and keeps the job for the
next start, as a stopped server does (it ran 2 times in 3, racing the workers' deaths).
(A drained worker's death at the server alone: tests/integration/test_server_drain.py.)"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import psutil
import pytest

from farm.client.admin import admin_query
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

HOLDER = """
[functions.h]
target = "tests.helpers.crashy:hold"
workers = 1
"""


def _farm(folder: Path, store: Path, retries: int = 3) -> FarmUp:
    folder.mkdir()
    up = FarmUp(folder, HOLDER, start=False)
    text = up.config.read_text()
    text = text.replace('store = "none"', f'store = "{store}"')
    text = text.replace("job_retries = 3", f"job_retries = {retries}")
    up.config.write_text(text.replace("graceful_timeout = 10", "graceful_timeout = 1"))
    up.start()
    up.expect_notify("READY=1")
    return up


def _stored(store: Path) -> int:
    db = sqlite3.connect(store)  # closed at once: the next server must own the store alone
    try:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        db.close()


def _queued(up: FarmUp) -> int:  # the store is the running server's alone: ask it
    """Jobs of ``h`` the server holds (queued or running), from gearmand's admin ``status``."""
    for line in admin_query(up.addr, "status").splitlines():
        fields = line.split("\t")
        if fields[0] == "h":
            return int(fields[1])
    return 0


def _started(jobs: Path) -> list[Path]:
    return sorted(jobs.glob("started-*"))


def _submit_held_job(up: FarmUp, jobs: Path) -> None:
    import farm

    jobs.mkdir()
    with farm.Client(up.addr, timeout=10) as client:
        client.submit("h", str(jobs), background=True)
    wait_for("a worker to hold the job", lambda: _started(jobs), timeout=15)


@pytest.mark.parametrize(("how", "retries"), [("farm stop", 3), ("kill -9 of the supervisor", 1)])
def test_a_job_killed_with_its_farm_stays_in_the_store_and_runs_at_the_next_start(
    tmp_path: Path, how: str, retries: int
) -> None:
    store, jobs = tmp_path / "queue.db", tmp_path / "jobs"
    up = _farm(tmp_path / "first", store, retries)
    try:
        server = next(row["pid"] for row in up.ps() if row["function"] == "server")
        _submit_held_job(up, jobs)
        if how == "farm stop":
            up.signal(signal.SIGTERM)  # drains for graceful_timeout (1 s), then kills
            assert up.proc.wait(30) == 0
        else:
            up.signal(signal.SIGKILL)  # its workers get SIGKILL and its server SIGTERM at once
            up.proc.wait(10)
            psutil.wait_procs([psutil.Process(server)], timeout=10)
        assert "poison job" not in up.read_log(), up.read_log()
    finally:
        up.stop()
    assert _stored(store) == 1, "the job was deleted from the store"
    (jobs / "go").touch()
    again = _farm(tmp_path / "second", store)
    try:
        wait_for("the job to run again", lambda: len(_started(jobs)) == 2, timeout=20)
        wait_for("it to end", lambda: _queued(again) == 0, timeout=20)
    finally:
        again.stop()
    assert _stored(store) == 0, "an ended job leaves the store"


def test_farm_stop_with_job_retries_1_fails_the_running_job_as_stopped_not_poison(
    tmp_path: Path,
) -> None:
    store, jobs = tmp_path / "queue.db", tmp_path / "jobs"
    up = _farm(tmp_path / "farm", store, retries=1)
    try:
        _submit_held_job(up, jobs)
        up.signal(signal.SIGTERM)
        assert up.proc.wait(30) == 0
        log = up.read_log()
    finally:
        up.stop()
    assert "its worker was stopped past its grace; failed, as job_retries = 1" in log, log
    assert "poison job" not in log
    assert _stored(store) == 0, "at most once: it does not run again"


def test_a_worker_death_read_just_before_the_supervisors_is_not_a_poison_job(
    tmp_path: Path,
) -> None:
    # The supervisor's death kills its workers (SIGKILL) and stops its server (SIGTERM) at
    # once, and the server may read a worker's end a moment before it learns its parent is
    # gone: with job_retries = 1 it deleted the running job as poison (seen in CI). Here the
    # worker's connection ends first, and the server's parent dies right after.
    import socket
    import subprocess
    import sys

    from farm.protocol import PacketType as T
    from tests.helpers import ROOT
    from tests.helpers.peers import Peer
    from tests.helpers.servers import free_port

    store, log = tmp_path / "queue.db", tmp_path / "server.log"
    port = free_port()
    server = [sys.executable, "-m", "farm.server", "--port", str(port), "--store", str(store)]
    server += ["--job-retries", "1", "-l", str(log)]
    parent = subprocess.Popen(  # the supervisor's stand-in: the server's parent
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys; argv = sys.argv[1:] + ['--parent-pid', str(os.getpid())]"
            "; subprocess.Popen(argv); sys.stdin.read()",
            *server,
        ],
        stdin=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        addr = f"127.0.0.1:{port}"
        wait_for("the server", lambda: _connectable(addr), timeout=20)
        worker = Peer(addr)
        worker.send(T.CAN_DO, "h")
        client = Peer(addr)
        client.send(T.SUBMIT_JOB_BG, "h", "", "x")
        client.expect(T.JOB_CREATED)
        worker.send(T.GRAB_JOB)
        worker.expect(T.JOB_ASSIGN)
        worker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        worker.sock.close()  # its end first (a reset, as a killed process's)...
        parent.kill()  # ...then its supervisor's
        parent.wait(10)
        wait_for("the server to stop with its parent", lambda: not _connectable(addr))
    finally:
        parent.kill()
    assert "poison job" not in log.read_text(), log.read_text()
    assert _stored(store) == 1, "the job was deleted from the store"


def _connectable(addr: str) -> bool:
    import socket

    host, _, port = addr.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True
