"""farm.Worker answering a job (or sending its data) to a server that stopped reading
(SIGSTOP) mid-answer, the answer larger than the sockets' buffers: the write is bounded
by ``connect_timeout``, as a grab that server leaves unanswered is. The other servers'
jobs go on, ``stop()`` and ``register()`` return, and the hung server, dropped, is served
again once it wakes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import farm
from tests.helpers.servers import Server, start_farm_server, stop_process
from tests.helpers.serving import reverse
from tests.helpers.waiting import wait_for

#: Past what loopback's socket buffers hold (the kernel's and the server's), both ends'.
LARGE = 32 << 20
BOUND = 1.0  # the worker's connect_timeout


@pytest.fixture
def hung_then_woken() -> Iterator[Server]:
    """farm's server, which a job stops (SIGSTOP) as it answers; woken at teardown."""
    srv = start_farm_server()
    try:
        yield srv
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


class StopsItsServer:
    """A job function that, the first time, stops its job's server and then answers it
    with ``LARGE`` bytes (or sends them as data: ``as_data``); later, a small answer."""

    def __init__(self, server: Server, *, as_data: bool = False) -> None:
        self.server, self.as_data = server, as_data
        self.stopped = threading.Event()
        self.data_written: bool | None = None  # what send_data said
        self.data_done = threading.Event()
        self._first = True

    def __call__(self, job: farm.Job) -> bytes:
        if not self._first:  # the stopped server's job, handed out again once it woke
            return b"small"
        self._first = False
        large = b"x" * LARGE
        stop_process(self.server.proc.pid)
        self.stopped.set()
        if self.as_data:
            self.data_written = job.send_data(large)
            self.data_done.set()
            return b"done"
        return large


@contextmanager
def working(worker: farm.Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(BOUND + 10)


def submit(server: Server, function: str) -> None:
    with farm.Client(server.addr) as c:
        c.submit(function, b"go", background=True)


@pytest.mark.timeout(90)
def test_a_large_answer_to_a_hung_server_holds_no_jobs_of_the_other(
    hung_then_woken: Server, farm_server: Server
) -> None:
    # The answer's write blocked for ever with the send lock held: the live server's
    # jobs waited as long as the other one hung.
    big = StopsItsServer(hung_then_woken)
    worker = farm.Worker([hung_then_woken.addr, farm_server.addr], connect_timeout=BOUND)
    worker.register("big", big)
    worker.register("reverse", reverse)
    with working(worker) as thread:
        submit(hung_then_woken, "big")
        assert big.stopped.wait(20), "the job never ran"
        with farm.Client(farm_server.addr) as live:
            for data in (b"ab", b"cd"):
                assert live.call("reverse", data, timeout=20) == data[::-1]
        os.kill(hung_then_woken.proc.pid, signal.SIGCONT)  # dropped, it is served again
        with farm.Client(hung_then_woken.addr) as woken:
            assert woken.call("reverse", b"gh", timeout=20) == b"hg"
    assert not thread.is_alive(), "work() did not return"


@pytest.mark.timeout(60)
def test_stop_and_register_return_though_the_answers_server_hangs(
    hung_then_woken: Server, farm_server: Server
) -> None:
    big = StopsItsServer(hung_then_woken)
    worker = farm.Worker([hung_then_woken.addr, farm_server.addr], connect_timeout=BOUND)
    worker.register("big", big)
    with working(worker) as thread:
        submit(hung_then_woken, "big")
        assert big.stopped.wait(20), "the job never ran"
        registering = threading.Thread(target=worker.register, args=("other", reverse))
        registering.start()
        registering.join(BOUND + 5)
        assert not registering.is_alive(), "register() waited for the hung server"
        began = time.monotonic()
        worker.stop()
        thread.join(BOUND + 5)
        assert not thread.is_alive(), "work() did not return: stop() waits for the hung server"
        assert time.monotonic() - began < BOUND + 5


@pytest.mark.timeout(60)
def test_send_data_to_a_hung_server_gives_up_within_the_bound(
    hung_then_woken: Server, farm_server: Server
) -> None:
    # job.send_data wrote through the same blocking write: it never returned.
    big = StopsItsServer(hung_then_woken, as_data=True)
    worker = farm.Worker([hung_then_woken.addr, farm_server.addr], connect_timeout=BOUND)
    worker.register("big", big)
    worker.register("reverse", reverse)
    with working(worker):
        submit(hung_then_woken, "big")
        assert big.stopped.wait(20), "the job never ran"
        assert big.data_done.wait(BOUND + 10), "send_data() waited for the hung server"
        assert big.data_written is False  # its server dropped: nobody takes that data
        with farm.Client(farm_server.addr) as live:
            assert live.call("reverse", b"ab", timeout=20) == b"ba"


@pytest.mark.timeout(60)
def test_abandon_says_false_when_its_work_fail_never_reached_a_hung_server(
    hung_then_woken: Server, farm_server: Server
) -> None:
    # abandon() said True though its WORK_FAIL waited behind the job's data, which the hung
    # server never took, and was lost with its connection: kill_rss_mb's watchdog exited
    # believing the server had failed the job, where it hands it out again.
    said: list[bool] = []
    worker = farm.Worker([hung_then_woken.addr, farm_server.addr], connect_timeout=BOUND)

    def watchdog(job: farm.Job) -> None:
        # Once the job's data waits on the hung server, the job's thread writing its rest.
        wait_for("the data to wait", lambda: any(s.pending for s in worker._servers))
        said.append(worker.abandon(job, "RSS 900 MiB over kill_rss_mb 512; worker exits"))

    def big(job: farm.Job) -> bytes:
        stop_process(hung_then_woken.proc.pid)
        watching = threading.Thread(target=watchdog, args=(job,), daemon=True)
        watching.start()
        job.send_data(b"x" * LARGE)
        watching.join(BOUND + 10)
        return b"done"

    worker.register("big", big)
    with working(worker):
        submit(hung_then_woken, "big")
        wait_for("abandon() to return", lambda: said, timeout=BOUND + 20)
    assert said == [False]
