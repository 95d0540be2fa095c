"""The Executor pump's choice of server (farm.executor.links) keeps ServerPicker's rule: a
server that takes a connection again starts afresh, as it does for farm.Client and
AsyncClient."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from farm.client import serverpick
from farm.client.serverpick import DOWN_FOR
from farm.errors import ServerUnavailable
from farm.executor.pump import Pump
from farm.executor.signing import Signer
from tests.helpers.stalled import unanswered_listener


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
    monkeypatch.setattr(serverpick.time, "monotonic", lambda: now[0])
    a, b = (f"127.0.0.1:{s.getsockname()[1]}" for s in two)
    pump = Pump([a, b], Signer(b"k" * 32), "farm.python", "normal", 4, connect_timeout=1)
    try:
        for _ in range(2):  # both refuse, and refuse again on their try back
            with pytest.raises(ServerUnavailable):
                pump._connection()
            now[0] += 2 * DOWN_FOR + 1
        two[0].listen()
        conn = pump._connection()  # a is back (b refuses still)
        pump._drop(conn, "closed the connection")  # and gone again
        now[0] += DOWN_FOR
        pump._picker.mark_down(b)  # b refuses still: a goes first once it is live again
        assert pump._picker.order() == [a, b], "a is tried last for DOWN_FOR, no more"
    finally:
        pump._selector.close()
        pump._waker.close()


def test_a_host_that_answers_no_connect_holds_the_pump_a_tenth_of_the_time() -> None:
    # The pump's connect waits connect_timeout, and every call waits with it: tried again
    # each DOWN_FOR, such a host held the Executor up 5 s in every 7.
    with unanswered_listener() as hung:
        pump = Pump([hung], Signer(b"k" * 32), "farm.python", "normal", 4, connect_timeout=0.5)
        try:
            with pytest.raises(ServerUnavailable, match="timed out"):
                pump._connection()
            assert pump._picker._down_until[hung] - time.monotonic() > 4
        finally:
            pump._selector.close()
            pump._waker.close()
