"""A blocking call interrupted in its select() by a signal handler that closes its client or
makes its connections readable together: what one select() returns is read safely.

The handler runs on SIGUSR1, sent to the main thread by a helper thread once the call is
under way. Not SIGALRM: pytest-timeout's method here is ``signal`` (SIGALRM and
ITIMER_REAL), which a test's own handler and timer would replace, so a hang hung the run."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import farm
from farm.client.admin import admin_query
from farm.client.serverpick import key_slot
from farm.protocol import Decoder, encode_res
from farm.protocol import PacketType as T
from farm.protocol.admin import parse_status
from tests.helpers.servers import Server
from tests.helpers.waiting import wait_for

Handler = Callable[[int, Any], None]


@contextlib.contextmanager
def signal_once(ready: threading.Event, handler: Handler) -> Iterator[threading.Event]:
    """Run ``handler`` in the main thread (a signal handler) once ``ready`` is set; the event
    yielded is set when it has run. The previous SIGUSR1 handler is back on the way out."""
    ran, sent, lock = threading.Event(), threading.Event(), threading.Lock()
    finished = False

    def run(signum: int, frame: Any) -> None:
        try:
            handler(signum, frame)
        finally:
            ran.set()

    def send() -> None:
        if ready.wait(20):
            with lock:
                if not finished:
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
                    sent.set()

    previous = signal.signal(signal.SIGUSR1, run)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield ran
    finally:
        with lock:
            finished = True
        # A signal sent is handled before the default (which ends the process) is back.
        deadline = time.monotonic() + 10
        while sent.is_set() and not ran.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs between these
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.timeout(30)
def test_a_call_closed_by_a_signal_handler_while_it_waits_fails_as_closed(
    farm_server: Server,
) -> None:
    # The signal comes while the call waits in select(): the handler's close() closed the
    # selector's epoll under it, select() was retried on the closed fd, and the call raised
    # OSError [Errno 9] Bad file descriptor. No worker serves "nobody": the call waits.
    client = farm.Client(farm_server.addr)
    client.echo("up")  # connected: the signal finds the call waiting on the server
    queued = threading.Event()

    def queued_yet() -> None:  # the server holds the call's job: the call is in select()
        def listed() -> bool:
            rows = parse_status(admin_query(farm_server.addr, "status", timeout=10))
            return any(row.function == "nobody" and row.total for row in rows)

        wait_for("the call's job queued", listed, timeout=20)
        queued.set()

    threading.Thread(target=queued_yet, daemon=True).start()
    with signal_once(queued, lambda *_: client.close()) as closed:
        with pytest.raises(farm.errors.ServerUnavailable, match="Client was closed"):
            client.call("nobody", "x", timeout=20)
        assert closed.is_set()
    with pytest.raises(RuntimeError, match="closed"):
        client.call("nobody", "y")


@pytest.mark.timeout(60)
def test_a_close_by_a_callback_ends_the_rest_of_that_select_batch() -> None:
    # One select() returns A readable and then B writable (B's server reads again, at last,
    # part of a large submit). A's read runs a callback that closes the client; B's turn
    # then sent on its closed socket, and last_words() raised OSError [Errno 9] from
    # setblocking(). A paused signal handler holds the call's select() while A's news and
    # B's room come, in that order, so that the one select after it returns both.
    a_listener = socket.create_server(("127.0.0.1", 0))
    b_listener = socket.create_server(("127.0.0.1", 0))
    a, b = (f"127.0.0.1:{s.getsockname()[1]}" for s in (a_listener, b_listener))
    key_a, key_b = (next(k for k in map(str, range(100)) if key_slot(k, 2) == i) for i in (0, 1))
    a_conn: list[socket.socket] = []
    submitted = threading.Event()

    def serve_a() -> None:  # OPTION_RES and JOB_CREATED; its WORK_STATUS when asked below
        conn, _ = a_listener.accept()
        a_conn.append(conn)
        decoder, seen = Decoder(), []
        while T.SUBMIT_JOB not in seen:
            seen += [p.type for p in decoder.feed(conn.recv(65536))]  # type: ignore[union-attr]
        conn.sendall(encode_res(T.OPTION_RES, b"exceptions") + encode_res(T.JOB_CREATED, b"H:1"))
        submitted.set()  # A is in the client's connections, and its job created

    threading.Thread(target=serve_a, daemon=True).start()
    client = farm.Client([a, b], timeout=0.5)
    with pytest.raises(farm.Timeout):  # B reads nothing: most of it waits in the client
        client.submit("f", b"x" * (64 << 20), unique=key_b)
    b_conn, _ = b_listener.accept()

    def hold(signum: int, frame: Any) -> None:  # the call waits in select() here
        a_fd, b_fd = (client._wire.conns[addr].sock.fileno() for addr in (a, b))
        a_conn[0].sendall(encode_res(T.WORK_STATUS, b"H:1", b"1", b"2"))
        select.select([a_fd], [], [], 10)  # A's news is there, first
        while not select.select([], [b_fd], [], 0)[1]:  # then B takes bytes again
            b_conn.recv(1 << 20)

    def closer(numerator: int, denominator: int) -> None:
        client.close()

    try:
        closed = pytest.raises(farm.errors.ServerUnavailable, match="Client was closed")
        with signal_once(submitted, hold), closed:
            client.call("g", "x", unique=key_a, timeout=20, on_status=closer)
    finally:
        for sock in (b_conn, *a_conn, a_listener, b_listener):
            sock.close()
