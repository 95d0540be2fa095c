"""A farm worker stopped (SIGSTOP) with a job pushed to its held grab does not run the job
when it wakes past the server's --wake-deadline: the server took the job back, gave it to
another worker, and wrote JOB_REVOKE behind the assignment (docs/held-grab.md, revoke).
Before that extension the late worker ran it too, so the job ran twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server, unix_farm_server

pytestmark = pytest.mark.timeout(90)


@contextmanager
def recording_worker(addr: str, record: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`farm worker tests.helpers.crashy:record`: each job it runs appends its unique."""
    env = dict(os.environ, FARM_TEST_RECORD=str(record), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "farm", "worker", "tests.helpers.crashy:record"]
    proc = subprocess.Popen([*cmd, "--server", addr], cwd=ROOT, env=env)
    try:
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process would not hear the SIGTERM
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()  # not left running past the test
            proc.wait(5)
            raise


def call(client: Peer, unique: str) -> None:
    """Run one `record` job to its end (foreground: the worker's answer is the event)."""
    client.send(T.SUBMIT_JOB, "record", unique, "")
    handle = client.expect(T.JOB_CREATED).args[0]
    assert client.expect(T.WORK_COMPLETE, timeout=30).args[0] == handle


@pytest.fixture(params=["tcp", "unix"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Server, str]]:
    """The server and the address its workers use: TCP (they accept with JOB_ACCEPT) or
    its Unix socket (read-accept: the kernel tells the server what they have read)."""
    if request.param == "tcp":
        srv = start_farm_server()
        try:
            yield srv, srv.addr
        finally:
            srv.stop()
    else:
        with unix_farm_server(prefix="farm-revoke-") as srv:
            yield srv, f"unix:{srv.unix}"


def test_a_stopped_worker_does_not_run_the_job_taken_back_from_it(
    server: tuple[Server, str], peer_factory: Callable[[str], Peer], tmp_path: Path
) -> None:
    srv, addr = server
    record = tmp_path / "ran"
    client = peer_factory(srv.addr)
    with ExitStack() as stack:
        stopped = stack.enter_context(recording_worker(addr, record))
        # Its answer leaves with its next grab, in one write (farm.Worker, no after_job
        # hook): once the client has the answer, the server holds that grab.
        call(client, "warm-up")
        os.kill(stopped.pid, signal.SIGSTOP)
        client.send(T.SUBMIT_JOB, "record", "once", "")
        handle = client.expect(T.JOB_CREATED).args[0]  # pushed to the stopped one's grab
        with recording_worker(addr, record):
            # Taken back past --wake-deadline (0.5 s), and run by this one.
            assert client.expect(T.WORK_COMPLETE, timeout=30).args[0] == handle
        os.kill(stopped.pid, signal.SIGCONT)
        # The only worker now: it ran this after whatever it read before, the push included.
        call(client, "after")
    assert record.read_text().splitlines() == ["warm-up", "once", "after"]
