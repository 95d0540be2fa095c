"""``admin_query`` (``farm status``, ``farm jobs``, the supervisor's asks) against a port
whose server never finishes a reply: one that trickles a listing without its end, one
that streams what is no reply at all (a chargen-like service). Its timeout bounds the
whole reply, not each read, so neither holds the caller for ever."""

from __future__ import annotations

import socket
import threading

import pytest

from farm.client.admin import admin_query
from tests.helpers.stalled import Behaviour, misbehaving


def trickling(conn: socket.socket, stop: threading.Event) -> None:
    """A line of a listing every 50 ms, and never its end: each read gets something."""
    conn.recv(100)
    while not stop.wait(0.05):
        conn.sendall(b"reverse\t0\t0\t1\n")


def streaming(conn: socket.socket, stop: threading.Event) -> None:
    """Bytes as fast as they are taken, none of them a reply."""
    while not stop.is_set():
        conn.sendall(b"0123456789" * 1000)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("behave", [trickling, streaming], ids=["trickling", "streaming"])
def test_a_reply_that_never_ends_is_given_up_at_the_timeout(behave: Behaviour) -> None:
    # Each read had the timeout, and each got something: the query read for ever (and,
    # against a stream, held all it read).
    outcome: list[BaseException | str] = []

    def ask(addr: str) -> None:
        try:
            outcome.append(admin_query(addr, "status", timeout=1))
        except BaseException as exc:  # for the test to look at
            outcome.append(exc)

    with misbehaving(behave) as addr:
        thread = threading.Thread(target=ask, args=(addr,), daemon=True)
        thread.start()
        thread.join(10)
        assert outcome, "admin_query still reading after 10 s with a timeout of 1 s"
    assert isinstance(outcome[0], TimeoutError), outcome
    assert "status" in str(outcome[0]) and "1" in str(outcome[0])
