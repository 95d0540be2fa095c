"""A submit cut short over TLS: what left the client before the connection broke is told
from what did not, though TLS sends a record at a time (farm.sockio.send_now)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from farm.net import TLS_SEND, send_now, sent_before
from farm.protocol.client import Task
from tests.helpers.tlspki import pki

__all__ = ["pki"]  # a fixture, for pytest to find

BIG = 8 << 20  # past what the socket buffers of a server not reading take


@pytest.fixture
def tls_peer(pki: Path) -> Iterator[tuple[str, threading.Event, ssl.SSLContext]]:
    """A TLS server that takes one connection and reads nothing of it until the event is set;
    then a little, and holds it open. Its address, the event, and a client context."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)  # no connection: the thread ends
    read, done = threading.Event(), threading.Event()

    def serve() -> None:
        with server_ctx.wrap_socket(listener.accept()[0], server_side=True) as conn:
            read.wait(30)
            try:
                conn.recv(1 << 20)
            except ConnectionResetError:
                # The client closed with bytes unread here (each test's end), which the
                # kernel tells as a reset: what the tests look at is the client's side.
                return
            done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}", read, client_ctx
    done.set()
    read.set()
    thread.join(30)
    listener.close()


def test_a_submit_sent_whole_before_a_tls_send_failed_is_not_taken_for_unwritten(
    tls_peer,
) -> None:
    # A TLS send goes a record (16 KB) at a time: a reset after some had gone lost the count
    # of them, and every byte handed over was taken for unsent. A small submit that had left
    # whole (the server may have read it and created the job) failed as "not sent whole: not
    # created", and with another server would have been sent there too: run twice.
    addr, read, ctx = tls_peer
    first, small, last = Task("f", b"x" * BIG), Task("f", b"small"), Task("f", b"y" * BIG)
    with farm.Client(addr, tls=ctx) as c:
        wire = c._wire
        for task in (first, small, last):
            wire.submit(task)
        conn = wire.conns[addr]
        wire.pump(lambda: bool(conn.unsent), time.monotonic() + 10)  # the server reads none
        assert conn.unsent
        end = bytes(conn.unsent).index(small.packet()) + len(small.packet())
        taken = 0

        def send(view: memoryview) -> int:  # the peer resets once past the small submit
            nonlocal taken
            if taken >= end:
                raise ConnectionResetError(104, "Connection reset by peer")
            taken += len(view)
            return len(view)

        conn.sock.send = send  # type: ignore[method-assign]
        read.set()  # the socket becomes writable: the client sends on
        wire.pump(lambda: all(t.done for t in (first, small, last)), time.monotonic() + 10)
    assert "(not confirmed: it may have been created)" in str(first.error)
    assert "(not confirmed: it may have been created)" in str(small.error)
    assert "(not sent whole: not created)" in str(last.error)


def test_send_now_says_what_went_before_a_tls_send_failed(tls_peer) -> None:
    addr, read, ctx = tls_peer
    host, port = addr.split(":")
    with ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host) as s:
        calls = 0

        def send(view: memoryview) -> int:
            nonlocal calls
            calls += 1
            if calls > 2:
                raise ConnectionResetError(104, "Connection reset by peer")
            return len(view)

        s.send = send  # type: ignore[method-assign]
        with pytest.raises(ConnectionResetError) as raised:
            send_now(s, b"z" * (5 * TLS_SEND))
    assert sent_before(raised.value) == 2 * TLS_SEND
