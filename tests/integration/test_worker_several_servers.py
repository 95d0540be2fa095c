"""farm.Worker registered with several job servers while one of them hangs (SIGSTOP): the
live servers' jobs go on being served, and the hung one is served again once it wakes."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import farm
from farm.protocol import PacketType as T
from farm.protocol import encode_res
from tests.helpers.servers import Server, start_farm_server, stop_process
from tests.helpers.serving import reverse, serving
from tests.helpers.stalled import misbehaving


@pytest.fixture
def stopped_server() -> Iterator[Server]:
    """farm's server, SIGSTOPped: its kernel still accepts connections, nothing answers."""
    srv = start_farm_server()
    stop_process(srv.proc.pid)
    try:
        yield srv
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


@pytest.mark.timeout(60)
def test_a_hung_server_holds_no_jobs_of_the_live_one(stopped_server, any_server) -> None:
    # The worker's one grab went to the hung server and waited there for ever: the live
    # server's jobs waited with it (python-gearman and libgearman serve the others).
    servers = [stopped_server.addr, any_server.addr]
    with serving(servers, {"reverse": reverse}, connect_timeout=1):
        with farm.Client(any_server.addr) as live:
            for data in (b"ab", b"cd", b"ef"):
                assert live.call("reverse", data, timeout=20) == data[::-1]
        os.kill(stopped_server.proc.pid, signal.SIGCONT)  # it wakes, and is served again
        with farm.Client(stopped_server.addr) as woken:
            assert woken.call("reverse", b"gh", timeout=20) == b"hg"


@pytest.mark.timeout(30)
def test_stop_returns_though_the_server_of_a_held_grab_hangs(farm_server) -> None:
    # One farm server holds the worker's idle grab (docs/held-grab.md); stop() sends
    # RESET_ABILITIES and waited for the NO_JOB that ends it, from a server that is hung.
    worker = farm.Worker(farm_server.addr, connect_timeout=1)
    worker.register("reverse", reverse)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    with farm.Client(farm_server.addr) as c:
        assert c.call("reverse", b"ab", timeout=20) == b"ba"  # served: its grab is held now
    stop_process(farm_server.proc.pid)
    try:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "work() did not return"
    finally:
        os.kill(farm_server.proc.pid, signal.SIGCONT)


class SlowReader:
    """A live server that reads slowly (64 KiB each 20 ms): it assigns one job at the first
    grab, answers each later grab with NO_JOB, and notes each packet it reads in ``read``;
    ``ended`` once the worker sleeps on it (PRE_SLEEP: its connection lived) or drops it."""

    def __init__(self) -> None:
        self.read: list[str] = []
        self.ended = threading.Event()

    def __call__(self, conn: socket.socket, stop: threading.Event) -> None:
        buf, assigned = bytearray(), False
        try:
            while not stop.is_set() and (data := conn.recv(65536)):
                buf += data
                time.sleep(0.02)  # its pace: slow, not hung
                while len(buf) >= 12 and len(buf) >= 12 + int.from_bytes(buf[8:12], "big"):
                    kind = T(int.from_bytes(buf[4:8], "big"))
                    del buf[: 12 + int.from_bytes(buf[8:12], "big")]
                    self.read.append(kind.name)
                    if kind is T.PRE_SLEEP:
                        return
                    if kind in (T.GRAB_JOB, T.GRAB_JOB_UNIQ, T.GRAB_JOB_ALL):
                        assign = encode_res(T.JOB_ASSIGN, b"H:1", b"big", b"x")
                        conn.sendall(encode_res(T.NO_JOB) if assigned else assign)
                        assigned = True
        finally:
            self.ended.set()


@pytest.mark.timeout(60)
def test_a_slow_server_is_not_dropped_for_a_grab_queued_behind_a_large_answer(
    farm_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # The grab's deadline (connect_timeout) ran from when it was queued, behind an answer
    # that took the slow server longer than that to read: the live server was dropped as
    # hung ("did not answer a grab within 1s") with its answer just read.
    caplog.set_level(logging.INFO, logger="farm.worker")
    slow = SlowReader()
    with misbehaving(slow) as addr:
        worker = farm.Worker([addr, farm_server.addr], connect_timeout=1)
        worker.register("big", lambda job: b"R" * 12_000_000)  # ~4 s at its pace
        thread = threading.Thread(target=worker.work, daemon=True)
        thread.start()
        try:
            assert slow.ended.wait(40), "the slow server still reading"
        finally:
            worker.stop()
            thread.join(10)
    assert not [r.getMessage() for r in caplog.records if "did not answer a grab" in r.getMessage()]
    assert "WORK_COMPLETE" in slow.read, slow.read
    assert slow.read[-1] == "PRE_SLEEP", slow.read  # asleep on it: that connection lived on
