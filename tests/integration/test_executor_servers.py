"""farm.Executor and several job servers, real ones and hung ones: the pool size it asks
them for, and the connections its pump holds on them."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

import farm
from farm.client.admin import admin_query, function_workers
from farm.executor.signing import ensure_key
from farm.protocol import PacketType as T
from farm.protocol.admin import parse_status
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server, start_like, unix_farm_server
from tests.helpers.waiting import wait_for

#: The pool's workers on the answering server: a count no default (the cores) gives here.
WORKERS = 3


@pytest.fixture
def key(tmp_path: Path) -> str:
    return str(ensure_key(tmp_path / "executor.key"))


@pytest.fixture
def server() -> Iterator[Server]:
    # The Unix socket too: only there may the server's user register farm.* functions.
    with unix_farm_server(prefix="farm-exsrv-") as srv:
        yield srv


def hung_listeners(stack: ExitStack, count: int) -> list[str]:
    """Servers that hang: the kernel accepts the connection, nobody ever reads or answers."""
    listeners = [stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(count)]
    return [f"127.0.0.1:{listener.getsockname()[1]}" for listener in listeners]


def pool_workers(make: Callable[[str], Peer], srv: Server, count: int) -> None:
    for _ in range(count):
        worker = make(f"unix:{srv.unix}")
        worker.send(T.CAN_DO, "farm.python")
        worker.send(T.ECHO_REQ, "registered")  # answered once CAN_DO was taken in
        worker.expect(T.ECHO_RES)


@pytest.mark.timeout(60)
def test_the_pool_size_is_asked_of_every_server_at_once(
    server: Server, key: str, peer_factory: Callable[[str], Peer]
) -> None:
    # Asked in turn, each hung server ahead of the answering one held the constructor for
    # the whole 1 s wait: three of them, 3 s. Asked at once, the three waits are one.
    pool_workers(peer_factory, server, WORKERS)
    with ExitStack() as stack:
        servers = [*hung_listeners(stack, 3), server.addr]
        began = time.monotonic()
        ex = farm.Executor(servers=servers, key_file=key)
        took = time.monotonic() - began
        ex.shutdown()
    assert ex._max_workers == WORKERS  # the first server that answers is the one counted
    # No event to wait on here: the constructor's time itself is what is tested. 2 s is
    # twice the one wait it needs, and 1 s short of the three in a row it needed.
    assert took < 2.0, f"the constructor took {took:.2f}s"


@pytest.mark.timeout(60)
def test_the_first_server_that_answers_is_counted_not_the_quickest(
    server: Server, farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # Asked at once, both live servers answer while the hung one still waits: the count is
    # still the first answering one's in the order given, as when they were asked in turn.
    pool_workers(peer_factory, server, WORKERS)
    with ExitStack() as stack:
        hung = hung_listeners(stack, 1)
        assert (
            function_workers([*hung, farm_server.addr, server.addr], "farm.python", timeout=1) == 0
        )
        assert (
            function_workers([*hung, server.addr, farm_server.addr], "farm.python", timeout=1)
            == WORKERS
        )
        assert function_workers(hung, "farm.python", timeout=0.2) is None


def connections(srv: Server) -> int:
    """The connections ``srv`` lists in ``workers``, less the one asking."""
    return len(admin_query(srv.addr, "workers").splitlines()) - 2  # the asker's, and "."


def queued(srv: Server) -> int:
    rows = parse_status(admin_query(srv.addr, "status"))
    return sum(row.total for row in rows if row.function == "farm.python")


@pytest.mark.timeout(60)
def test_a_connect_no_call_took_yet_is_watched_for_the_server_going(
    farm_server: Server, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The first call connects to both servers, each in a thread, and goes out on the first
    # that connects. The other's socket was left with its connect, unwatched, until a call
    # came for that server: a restart of it meanwhile went unseen, and that call was sent
    # on the dead socket and failed (ServerUnavailable: write failed, may have run).
    other = start_farm_server()
    ex = farm.Executor(8, servers=[farm_server.addr, other.addr], key_file=key)
    try:
        with caplog.at_level("WARNING", logger="farm.executor"):
            first = ex.submit(abs, -1)  # no worker: it stays queued on its server
            wait_for("both connects", lambda: connections(farm_server) == connections(other) == 1)
            busy, idle = (farm_server, other) if queued(farm_server) else (other, farm_server)
            assert queued(busy) == 1 and queued(idle) == 0
            idle.stop()
            wait_for(
                f"the executor to see {idle.addr} close its connection",
                lambda: f"job server {idle.addr} closed the connection" in caplog.text,
            )
            back = start_like(idle, port=idle.port)
            try:
                calls = [ex.submit(abs, -n) for n in range(2, 8)]
                wait_for("the calls on the servers", lambda: queued(busy) + queued(back) == 7)
                assert not [call for call in [first, *calls] if call.done()]
            finally:
                back.stop()
    finally:
        ex.shutdown(wait=False, cancel_futures=True)  # no worker runs its calls
        other.stop()
