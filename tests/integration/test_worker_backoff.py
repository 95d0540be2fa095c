"""farm.Worker against servers that take its connection and close it (a stand-in, and a real
server at --max-connections): retried with backoff, said as a warning past the outage grace,
not logged line after line."""

from __future__ import annotations

import logging
import re
import time

import pytest

import farm
from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server
from tests.helpers.serving import reverse, working
from tests.helpers.stalled import CuttingShort
from tests.helpers.waiting import wait_for


def take_every_connection(addr: str, limit: int) -> list[Peer]:
    """Peers holding all ``limit`` connections of a server at its --max-connections, each
    answered, so counted by the server before the worker under test comes."""
    hogs: list[Peer] = []
    for _ in range(limit):
        hogs.append(Peer(addr))
        hogs[-1].send(T.ECHO_REQ, b"x")
        hogs[-1].expect(T.ECHO_RES)
    return hogs


@pytest.mark.timeout(60)
def test_a_server_that_takes_each_connection_and_closes_it_is_a_warning_past_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server at its --max-connections takes each connection and closes it at once. Each
    # connect ended the outage, so a supervised worker said every loss at INFO and never
    # warned, locked out for as long as it lasted. The outage ends once the server talks
    # sense: past the grace it warns, once, and says so when the server is back.
    caplog.set_level("INFO", logger="farm.worker")
    grace = 1.0
    srv = start_farm_server("--max-connections", "2")
    hogs: list[Peer] = []
    try:
        hogs = take_every_connection(srv.addr, 2)

        def said(about: str = "") -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "farm.worker" and about in r.msg]

        def warnings() -> list[logging.LogRecord]:
            return [r for r in said() if r.levelno >= logging.WARNING]

        worker = farm.Worker(srv.addr)
        worker.outage_grace = grace
        worker.register("rev", reverse)
        started = time.monotonic()  # before its first connect: the outage starts later
        with working(worker):
            (first,) = wait_for("the worker's warning", warnings, timeout=15)
            assert time.monotonic() - started >= grace, [r.getMessage() for r in said()]
            # The next loss (the backoff's 1.6 s on) is no warning again: once an outage.
            wait_for("a loss after the warning", lambda: said("reconnecting")[-1] is not first)
            for hog in hogs:
                hog.sock.close()
            wait_for("the server back", lambda: said("is back"), timeout=15)
            with farm.Client(srv.addr) as client:
                assert client.call("rev", b"ab", timeout=10) == b"ba"
    finally:
        for hog in hogs:
            hog.sock.close()
        srv.stop()
    lines = [(r.levelname, r.getMessage()) for r in said()]
    before = lines[: lines.index((first.levelname, first.getMessage()))]
    assert before and {level for level, _ in before} == {"INFO"}, lines
    assert all("reconnecting" in line for _, line in before), lines
    assert re.search(r"; reconnecting \(out for \d+s\)$", first.getMessage()), lines
    assert [level for level, _ in lines].count("WARNING") == 1, lines


@pytest.mark.timeout(60)
def test_a_worker_shut_out_by_max_connections_logs_a_handful_of_lines_not_a_flood(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The server said ERROR SERVER_BUSY before each close past --max-connections: the
    # worker took it for an answer, reset its backoff and came back some 16 times a
    # second, two lines each (~160 in 5 s). A bare close, as gearmand's, meets the backoff.
    caplog.set_level("INFO", logger="farm.worker")
    srv = start_farm_server("--max-connections", "2")
    hogs: list[Peer] = []
    try:
        hogs = take_every_connection(srv.addr, 2)
        worker = farm.Worker(srv.addr)
        worker.register("rev", reverse)
        with working(worker):
            time.sleep(5)  # the window watched: what the worker logs in it is the test
        lines = [r.getMessage() for r in caplog.records if r.name == "farm.worker"]
    finally:
        for hog in hogs:
            hog.sock.close()
        srv.stop()
    # Tries at 0, 0.05, 0.15 ... 3.15 s (50 ms doubling): 7, a line each.
    assert 3 <= len(lines) <= 12, lines
    assert all("reconnecting" in line for line in lines), lines


@pytest.mark.timeout(60)
def test_an_error_before_a_close_does_not_reset_the_workers_backoff() -> None:
    # A server that answers each connection with an ERROR and closes it (farm's server at
    # its --max-connections did) is not one that talks sense: the worker reset its backoff
    # on any packet, and reconnected every 50 ms.
    busy = CuttingShort(says=p.encode_res(T.ERROR, b"SERVER_BUSY", b"try again later"))
    try:
        worker = farm.Worker(busy.addr)
        worker.register("rev", reverse)
        with working(worker):
            time.sleep(3)  # the window watched: how often the worker comes in it is the test
        # Tries at 0, 0.05, 0.15, 0.35, 0.75, 1.55 and 3.15 s: 6 in the window.
        assert 3 <= busy.accepts <= 8, busy.accepts
    finally:
        busy.close()
