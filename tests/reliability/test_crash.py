"""Crashes lose nothing: a killed server keeps every created job, a killed worker's job runs
elsewhere, and a job that kills every worker fails after job_retries and is reported."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.crashes import submit_until_killed
from tests.helpers.peers import Peer, grab_all
from tests.helpers.servers import Server, free_port, start_farm_server, start_with_store
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

JOBS = 10_000
WINDOW = 256  # submits in flight (submit_until_killed's default)


def test_kill_9_of_the_server_at_random_points_loses_no_created_job(tmp_path: Path) -> None:
    rng = random.Random(20261128)
    db = tmp_path / "queue.db"
    port = free_port()
    todo = [f"job-{i}" for i in range(JOBS)]
    created: set[str] = set()
    kills = 0
    while todo:
        srv = start_with_store(db, port)
        # Up to two windows of replies can follow the count a kill is due at (the read
        # that passes it, and what was in flight), however the reads fall on a loaded
        # machine; killing in the first half of what is left keeps jobs for all four.
        last = max(2, (len(todo) - 2 * WINDOW) // 2)
        kill_after = rng.randrange(1, last) if kills < 4 else None
        n = submit_until_killed(srv, todo, kill_after)
        created.update(todo[:n])
        todo = todo[n:]
        if kill_after is None:
            srv.stop()
        else:
            assert srv.proc.wait(10) == -signal.SIGKILL
            kills += 1
    assert kills >= 4
    srv = start_with_store(db, port)
    try:
        done = {u.decode() for u, _ in grab_all(srv.addr, "r")}
    finally:
        srv.stop()
    assert len(created) == JOBS
    assert created <= done, f"lost {len(created - done)} created jobs"


def start_worker(addr: str, target: str, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from farm.cli import main; main()", "worker", target]
    cmd += ["--name", name, "--server", addr]
    return subprocess.Popen(cmd, cwd=ROOT)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_worker_kill_9_mid_job_the_job_completes_on_another_worker(
    tmp_path: Path, farm_server: Server, procs: list[subprocess.Popen]
) -> None:
    for _ in range(2):
        procs.append(start_worker(farm_server.addr, "tests.helpers.crashy:hold", "hold"))
    result: dict[str, object] = {}

    def call() -> None:
        with farm.Client(farm_server.addr) as client:
            try:
                result["value"] = client.call("hold", str(tmp_path), timeout=30)
            except farm.FarmError as exc:
                result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    wait_for("a worker to start the job", lambda: any(tmp_path.glob("started-*")), 20)
    (first,) = tmp_path.glob("started-*")
    victim = int(first.name.split("-")[1])
    next(proc for proc in procs if proc.pid == victim).send_signal(signal.SIGKILL)
    wait_for(
        "the job requeued to the other worker",
        lambda: len(list(tmp_path.glob("started-*"))) == 2,
        20,
    )
    (tmp_path / "go").touch()
    caller.join(30)
    assert "error" not in result, result
    survivor = next(proc.pid for proc in procs if proc.pid != victim)
    assert result["value"] == str(survivor).encode()


def test_a_job_that_kills_every_worker_fails_after_job_retries_and_is_reported(
    procs: list[subprocess.Popen],
) -> None:
    srv = start_farm_server("--job-retries", "2")
    try:
        for _ in range(2):
            procs.append(start_worker(srv.addr, "tests.helpers.crashy:die", "die"))
        with farm.Client(srv.addr) as client, pytest.raises(farm.JobFailed):
            client.call("die", "poison", unique="poison-1", timeout=30)
        poison = Peer(srv.addr).admin("show poison jobs")
        assert poison.startswith("H:") and "\tdie\tpoison-1\n" in poison
        out = subprocess.run(
            [sys.executable, "-c", "from farm.cli import main; main()", "status", "-s", srv.addr],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "poison" in out.stdout and "poison-1" in out.stdout
    finally:
        srv.stop()
