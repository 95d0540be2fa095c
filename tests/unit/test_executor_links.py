"""The Executor pump's choice of server (farm.executor.links) keeps ServerPicker's rule: a
server that takes a connection again starts afresh, as it does for farm.Client and
AsyncClient."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from farm.client import serverpick
from farm.client.serverpick import DOWN_FOR
from farm.errors import ServerUnavailable
from farm.executor.links import Conn
from farm.executor.pump import Pump
from farm.executor.signing import Signer
from tests.helpers.stalled import unanswered_listener
from tests.helpers.waiting import wait_for


def connection(pump: Pump, within: float = 10) -> Conn:
    """``pump._connection()`` as the pump asks it: again each time one of the TCP connects
    it started, each in a thread of its own, ends (its wake-up); past ``within`` seconds
    of neither a connection nor ServerUnavailable, the test fails."""
    deadline = time.monotonic() + within
    while (conn := pump._connection()) is None:
        assert time.monotonic() < deadline, "neither a connection nor ServerUnavailable"
        dials = list(pump._dials.values())
        wait_for("a connect's end", lambda d=dials: any(x.outcome is not None for x in d))
    return conn


def refusing() -> socket.socket:
    """A TCP socket on 127.0.0.1, bound but not listening: connects to it are refused until
    ``listen()``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def two() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = refusing(), refusing()
    with a, b:
        yield a, b


def test_a_server_that_takes_a_connection_again_starts_afresh(
    two: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pump never told the picker that a connect worked: a server that came back and
    # went down again within the minute was tried last for twice as long as the time
    # before, as if it had never come back, and calls rotated past it all that while.
    now = [100.0]
    # serverpick's clock alone: time.monotonic itself drives the waits around it
    monkeypatch.setattr(serverpick, "time", SimpleNamespace(monotonic=lambda: now[0]))
    a, b = (f"127.0.0.1:{s.getsockname()[1]}" for s in two)
    pump = Pump([a, b], Signer(b"k" * 32), "farm.python", "normal", 4, connect_timeout=1)
    try:
        for _ in range(2):  # both refuse, and refuse again on their try back
            with pytest.raises(ServerUnavailable):
                connection(pump)
            now[0] += 2 * DOWN_FOR + 1
        two[0].listen()
        conn = connection(pump)  # a is back (b refuses still)
        pump._drop(conn, "closed the connection")  # and gone again
        now[0] += DOWN_FOR
        pump._picker.mark_down(b)  # b refuses still: a goes first once it is live again
        assert pump._picker.order() == [a, b], "a is tried last for DOWN_FOR, no more"
    finally:
        pump._close_all()
        pump._selector.close()
        pump._waker.close()


def test_a_host_that_answers_no_connect_holds_the_pump_a_tenth_of_the_time() -> None:
    # The pump's connect waits connect_timeout, and every call waits with it: tried again
    # each DOWN_FOR, such a host held the Executor up 5 s in every 7.
    with unanswered_listener() as hung:
        pump = Pump([hung], Signer(b"k" * 32), "farm.python", "normal", 4, connect_timeout=0.5)
        try:
            with pytest.raises(ServerUnavailable, match="timed out"):
                connection(pump)
            assert pump._picker._down_until[hung] - time.monotonic() > 4
        finally:
            pump._close_all()
            pump._selector.close()
            pump._waker.close()


def test_a_connect_under_way_holds_no_job_meant_for_another_server() -> None:
    # The pump connected blocking, in the thread that sends every call and reads every
    # reply: a host that answers no connect held all of them for connect_timeout.
    with unanswered_listener() as hung, socket.create_server(("127.0.0.1", 0)) as listener:
        live = f"127.0.0.1:{listener.getsockname()[1]}"
        pump = Pump([hung, live], Signer(b"k" * 32), "farm.python", "normal", 4, connect_timeout=5)
        try:
            for _ in range(4):  # the rotation starts at each in turn
                while (conn := pump._connection()) is None:  # both connect, each in a thread
                    dial = pump._dials.get(live)
                    if dial is not None:
                        wait_for("the live connect", lambda dial=dial: dial.outcome is not None)
                assert conn.addr == live
            # Not a clock (a loaded machine's is no measure): the hung connect, which ends at
            # connect_timeout, is still under way once all four have their connection.
            under_way = pump._dials.get(hung)
            assert under_way is not None and under_way.outcome is None, (
                "a job waited for the hung host's connect"
            )
        finally:
            pump._close_all()
            pump._selector.close()
            pump._waker.close()


def test_servers_that_refuse_beside_one_that_answers_no_connect_fail_the_calls() -> None:
    # The refusing server was connected to again while the other's connect went on, so
    # that some connect was always under way: the calls waited for ever.
    with unanswered_listener() as hung, refusing() as sock:
        refused = f"127.0.0.1:{sock.getsockname()[1]}"
        pump = Pump(
            [hung, refused], Signer(b"k" * 32), "farm.python", "normal", 4, connect_timeout=0.5
        )
        try:
            with pytest.raises(ServerUnavailable) as raised:
                connection(pump, within=3)
            assert f"{hung} (timed out)" in str(raised.value)
            assert f"{refused} (Connection refused)" in str(raised.value)
        finally:
            pump._close_all()
            pump._selector.close()
            pump._waker.close()
