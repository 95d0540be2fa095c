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
