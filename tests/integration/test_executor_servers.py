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
from farm.client.admin import function_workers
from farm.executor.signing import ensure_key
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, unix_farm_server

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
