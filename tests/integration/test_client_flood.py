"""farm.Client against a server that, once it has answered, sends packets without end (news
of jobs that are not ours): a call's look at what the connection holds before it sends
reads what had come by then, not for ever, so its timeout holds."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import farm
from farm.protocol import PacketType as T
from farm.protocol import encode_res


@contextmanager
def flooding_server() -> Iterator[str]:
    """Answers the client's first OPTION_REQ and ECHO_REQ, then sends WORK_STATUS of a job
    nobody asked about as fast as it is taken, and answers nothing more."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed before anyone connected
            return
        with conn:
            try:
                conn.recv(1000)
                conn.sendall(
                    encode_res(T.OPTION_RES, b"exceptions") + encode_res(T.ECHO_RES, b"hi")
                )
                news = encode_res(T.WORK_STATUS, b"H:elsewhere:1", b"1", b"2") * 1000
                while not stop.is_set():
                    conn.sendall(news)
            except OSError:  # the client went away
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() that still waits
        except OSError:
            pass
        listener.close()
        thread.join(10)


@pytest.mark.timeout(30)
def test_a_server_that_sends_without_end_does_not_hold_a_call_past_its_timeout() -> None:
    # The look before each request (catch_up: has the server closed the connection?) read
    # while anything was there: against this server, for ever, whatever the timeout.
    outcome: list[BaseException | bytes] = []
    with flooding_server() as addr:
        client = farm.Client(addr, timeout=1)
        assert client.echo(b"hi") == b"hi"

        def ask() -> None:
            try:
                outcome.append(client.echo(b"again"))
            except BaseException as exc:  # for the test to look at
                outcome.append(exc)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(10)
        assert outcome, "the echo still reading after 10 s with a timeout of 1 s"
        client.close()
    assert isinstance(outcome[0], farm.ServerUnavailable), outcome
    assert "did not answer within 1s" in str(outcome[0])
