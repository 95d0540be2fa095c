"""Crashes lose nothing: a killed server keeps every created job, a killed worker's job runs
elsewhere, and a job that kills every worker fails after job_retries and is reported."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from farm import protocol as p
from farm.protocol import PacketType as T
from tests.conftest import ROOT, Peer, Server, connect, free_port, start_farm_server
from tests.integration.test_store import start_with_store

pytestmark = pytest.mark.slow

JOBS = 10_000


def submit_until_killed(
    srv: Server, uniques: list[str], kill_after: int | None, window: int = 256
) -> int:
    """Submit background jobs, ``window`` in flight; SIGKILL the server after ``kill_after``
    JOB_CREATEDs, while submits are still in flight.

    Returns how many of ``uniques`` (a prefix, since replies come in order) were created.
    """
    sock = connect(srv.addr, timeout=30)
    decoder = p.Decoder(allow_admin=False)
    packets = [p.encode_req(T.SUBMIT_JOB_BG, b"r", u.encode(), b"x") for u in uniques]
    sent = min(window, len(packets))
    sock.sendall(b"".join(packets[:sent]))
    created = 0
    try:
        while created < len(uniques):
            data = sock.recv(1 << 16)
            if not data:
                break
            for pkt in decoder.feed(data):
                assert pkt.type == T.JOB_CREATED
                created += 1
            if kill_after is not None and created >= kill_after:
                srv.proc.send_signal(signal.SIGKILL)
                kill_after = None
            more = min(created + window, len(packets)) - sent
            if more > 0:
                sock.sendall(b"".join(packets[sent : sent + more]))
                sent += more
    except (ConnectionResetError, BrokenPipeError):
        pass
    sock.close()
    return created


def drain(addr: str) -> list[bytes]:
    worker = Peer(addr)
    worker.send(T.CAN_DO, "r")
    done = []
    while True:
        worker.send(T.GRAB_JOB_UNIQ)
        pkt = worker.recv()
        if pkt.type == T.NO_JOB:
            return done
        done.append(pkt.args[2])
        worker.send(T.WORK_COMPLETE, pkt.args[0], b"")


def test_kill_9_of_the_server_at_random_points_loses_no_created_job(tmp_path: Path) -> None:
    rng = random.Random(20261128)
    db = tmp_path / "queue.db"
    port = free_port()
    todo = [f"job-{i}" for i in range(JOBS)]
    created: set[str] = set()
    kills = 0
    while todo:
        srv = start_with_store(db, port)
        kill_after = rng.randrange(1, len(todo)) if kills < 4 and len(todo) > 1 else None
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
        done = {u.decode() for u in drain(srv.addr)}
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


def wait_for(predicate, timeout: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)  # polling files written by another process


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
    wait_for(lambda: any(tmp_path.glob("started-*")))
    (first,) = tmp_path.glob("started-*")
    victim = int(first.name.split("-")[1])
    next(proc for proc in procs if proc.pid == victim).send_signal(signal.SIGKILL)
    wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2)  # requeued to the other
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
