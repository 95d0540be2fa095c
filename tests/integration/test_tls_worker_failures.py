"""A TLS worker when its server dies or hangs: what it had to send is run or given up as
over plain TCP (split from tests/integration/test_tls.py)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

import farm
from farm.tlsfiles import tls_context
from tests.helpers.heldjob import HeldJob
from tests.helpers.servers import Server, start_farm_server, stop_process
from tests.helpers.tlspki import pki, tls_server

pytestmark = pytest.mark.slow
__all__ = ["pki", "tls_server"]  # fixtures, imported for pytest to find


@pytest.mark.timeout(60)
def test_a_tls_worker_runs_a_jobs_unsent_when_its_server_was_killed(
    tls_server: Server, pki: Path
) -> None:
    # The worker looks for the killed server's end of stream by poll(), nothing read: a
    # TLS socket's records stay for the TLS layer.
    ctx = tls_context(ca=str(pki / "ca.pem"))
    hold = HeldJob()

    worker = farm.Worker(tls_server.addr, tls=ctx)
    worker.register("hold", hold)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with farm.Client(tls_server.addr, tls=ctx) as client:
            hold.answered_then_lost(client, tls_server.proc)
        assert hold.ran.wait(10), "the lost job's unsent never ran (TLS)"
    finally:
        worker.stop()
        thread.join(10)


@pytest.mark.timeout(90)
def test_a_tls_worker_gives_up_a_large_answer_to_a_hung_server(
    tls_server: Server, pki: Path
) -> None:
    # A TLS write has partial sends of its own (SSLWantWriteError, the same record sent
    # again): an answer larger than the buffers, to a server that stopped reading, is
    # given up within connect_timeout, as over plain TCP; the other server's jobs go on,
    # and the hung one, dropped, is served again once it wakes.
    ctx = tls_context(ca=str(pki / "ca.pem"))
    other = start_farm_server(
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")
    )
    stopped = threading.Event()

    def large(job: farm.Job) -> bytes:
        if stopped.is_set():  # its job, handed out again once the server woke
            return b"small"
        answer = b"x" * (32 << 20)
        stop_process(tls_server.proc.pid)
        stopped.set()
        return answer

    worker = farm.Worker([tls_server.addr, other.addr], tls=ctx, connect_timeout=1)
    worker.register("large", large)
    worker.register("reverse", lambda job: job.data[::-1])
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with farm.Client(tls_server.addr, tls=ctx) as client:
            client.submit("large", b"go", background=True)
        assert stopped.wait(20), "the job never ran"
        with farm.Client(other.addr, tls=ctx) as client:
            assert client.call("reverse", b"ab", timeout=20) == b"ba"
        os.kill(tls_server.proc.pid, signal.SIGCONT)
        with farm.Client(tls_server.addr, tls=ctx) as client:
            assert client.call("reverse", b"cd", timeout=20) == b"dc"
    finally:
        os.kill(tls_server.proc.pid, signal.SIGCONT)
        worker.stop()
        thread.join(10)
        other.stop()
    assert not thread.is_alive(), "work() did not return"
