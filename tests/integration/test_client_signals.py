"""A blocking call interrupted in its select() by a signal handler that closes its client or
makes its connections readable together: what one select() returns is read safely.

The handler runs on SIGUSR1, sent to the main thread by a helper thread once the call is
under way. Not SIGALRM: pytest-timeout's method here is ``signal`` (SIGALRM and
ITIMER_REAL), which a test's own handler and timer would replace, so a hang hung the run."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Any

import psutil
import pytest

import farm
from farm.client.admin import admin_query
from farm.client.serverpick import key_slot
from farm.protocol import Decoder, encode_res
from farm.protocol import PacketType as T
from farm.protocol.admin import parse_status
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, free_port, start_like
from tests.helpers.signalonce import signal_once
from tests.helpers.waiting import wait_for


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
        options = encode_res(T.OPTION_RES, b"exceptions") + encode_res(T.OPTION_RES, b"fail-reason")
        conn.sendall(options + encode_res(T.JOB_CREATED, b"H:1"))
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


@pytest.mark.timeout(60)
def test_a_callbacks_own_call_that_reads_on_leaves_the_batch_nothing_to_wait_on(
    farm_server: Server,
) -> None:
    # One select() returns A's WORK_STATUS and B's WORK_COMPLETE (of a job submitted
    # before); A's on_status callback calls client.echo(), whose own pump reads B. The
    # call's loop then read B as the select said, a recv() on a blocking socket that
    # waited for the server's next word: the call hung past its timeout, here until B stops.
    b_server = start_like(farm_server)
    try:
        a, b = farm_server.addr, b_server.addr
        key_a, key_b = (next(k for k in map(str, range(99)) if key_slot(k, 2) == i) for i in (0, 1))
        a_worker, b_worker = Peer(a), Peer(b)
        a_worker.send(T.CAN_DO, "g")
        b_worker.send(T.CAN_DO, "f")
        client = farm.Client([a, b])
        first = client.submit("f", b"x", unique=key_b)
        assert first.server == b
        b_handle = grab(b_worker)
        a_handles: list[bytes] = []
        assigned, ended = threading.Event(), threading.Event()

        def grab_the_call() -> None:  # the call's job reached its worker: the call waits
            a_handles.append(grab(a_worker))
            assigned.set()

        def release() -> None:  # the hang's end: B's server goes, its socket reads its end
            if assigned.wait(20) and not ended.wait(15):
                b_server.stop()

        # What each step saw and when, for a failure's message: 1 run in about 200 under a
        # heavy load (two CPU hogs and other test files beside) found B's news unread.
        seen: list[tuple[str, float, object]] = []
        began = time.monotonic()

        def both(signum: int, frame: Any) -> None:  # A's news and B's, for one select()
            a_fd, b_fd = (client._wire.conns[addr].sock.fileno() for addr in (a, b))
            a_worker.send(T.WORK_STATUS, a_handles[0], "1", "2")
            seen.append(
                ("A readable", time.monotonic() - began, select.select([a_fd], [], [], 10)[0])
            )
            b_worker.send(T.WORK_COMPLETE, b_handle, b"first")
            seen.append(
                ("B readable", time.monotonic() - began, select.select([b_fd], [], [], 10)[0])
            )

        def echo_and_end(numerator: int, denominator: int) -> None:
            seen.append(("status", time.monotonic() - began, first.done))
            assert client.echo("nested") == b"nested"  # reads B's news too
            seen.append(("echoed", time.monotonic() - began, first.done))
            a_worker.send(T.WORK_COMPLETE, a_handles[0], b"second")

        for target in (grab_the_call, release):
            threading.Thread(target=target, daemon=True).start()
        with signal_once(assigned, both) as ran:
            start = time.monotonic()
            result = client.call("g", b"y", unique=key_a, timeout=30, on_status=echo_and_end)
            took = time.monotonic() - start
        ended.set()
        assert ran.is_set() and first.done and first.result == b"first", (took, seen, first)
        assert result == b"second" and took < 10, (took, seen)
        client.close()
        a_worker.close()
        b_worker.close()
    finally:
        b_server.stop()


def grab(worker: Peer) -> bytes:
    """The handle of the next job ``worker`` is given, asking until there is one."""
    worker.send(T.GRAB_JOB)
    while True:
        pkt = worker.recv(20)
        if pkt.type == T.JOB_ASSIGN:
            return bytes(pkt.args[0])
        worker.send(T.PRE_SLEEP if pkt.type == T.NO_JOB else T.GRAB_JOB)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("accepted", [True, False])
@pytest.mark.parametrize("ask", ["call", "echo", "status_unique"])
def test_a_call_closed_by_a_signal_handler_while_it_connects_fails_as_closed(
    accepted: bool, ask: str
) -> None:
    # A listener whose backlog is full drops the call's SYN: its connect() waits, and the
    # handler closes the client there. The connect then went on: made (the backlog drained),
    # the call raised ValueError "I/O operation on closed epoll object" and left the socket
    # in the closed client's connections; timed out, it said "no job server is reachable".
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    # And a server refusing connections, asked before or after: echo and status went on
    # to the next server after the close, and that raised RuntimeError "is closed".
    servers = [f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"]
    client = farm.Client(servers, connect_timeout=20 if accepted else 2)
    connecting = threading.Event()

    ours = {filler.getsockname()[1] for filler in fillers}

    def syn_sent() -> bool:  # the call's connect, not a filler's (theirs wait as well)
        conns = psutil.Process().net_connections("tcp4")
        return any(
            c.raddr and c.raddr.port == port and c.laddr.port not in ours and c.status == "SYN_SENT"
            for c in conns
        )

    def wait_syn() -> None:
        wait_for("the call's connect", syn_sent, timeout=20)
        connecting.set()

    drains: list[threading.Thread] = []

    def close(signum: int, frame: Any) -> None:
        client.close()
        if accepted:  # room again: the SYN sent again (after 1 s) is answered
            drains.append(threading.Thread(target=drain, daemon=True))
            drains[-1].start()

    def drain() -> None:
        while True:
            try:
                fillers.append(listener.accept()[0])
            except OSError:  # closed at the end
                return

    threading.Thread(target=wait_syn, daemon=True).start()
    try:
        closed = pytest.raises(farm.errors.ServerUnavailable, match="Client was closed")
        with signal_once(connecting, close), closed:
            if ask == "call":
                client.call("f", b"x", timeout=30)
            else:
                getattr(client, ask)("k")
        assert client._wire.conns == {}
    finally:
        # On Linux close() alone does not wake an accept() under way: the drain thread and
        # its port lived on past the test. shutdown() does.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        listening = [
            c for c in psutil.Process().net_connections("tcp4")
            if c.laddr.port == port and c.status == "LISTEN"
        ]  # fmt: skip
        for thread in drains:
            thread.join(5)  # at once, woken; else it waits for a connection that may not come
        for sock in fillers:
            sock.close()
    assert not listening and not any(thread.is_alive() for thread in drains), listening


class _CloseAtRegister:
    """The client's selector, with a close of the client landing just before or just after
    the new connection's register: where a signal handler's close may come, made certain."""

    def __init__(self, client: farm.Client, before: bool) -> None:
        self.client, self.before = client, before
        self.selector = client._wire.selector

    def register(self, *args: Any) -> Any:
        if self.before:
            self.client.close()
        try:
            return self.selector.register(*args)
        finally:
            if not self.before:
                self.client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.selector, name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_a_close_landing_at_a_new_connection_s_register_fails_as_closed(
    farm_server: Server, before: bool
) -> None:
    # connection() checked closed before it built the Conn, put it in conns and registered
    # it: a handler's close in between raised ValueError "I/O operation on closed epoll
    # object" (before the register), or left the call going on with a closed client.
    client = farm.Client(farm_server.addr)
    client._wire.selector = _CloseAtRegister(client, before)  # type: ignore[assignment]
    with pytest.raises(farm.errors.ServerUnavailable, match="Client was closed"):
        client.echo("x")
    assert client._wire.conns == {}
