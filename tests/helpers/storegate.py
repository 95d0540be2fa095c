"""A job server in this process whose store's writes wait for the test (``Gate``): a real
loop, real sockets, a real SQLite file, and commits that end when the test says so
(tests/integration/test_store_writer.py, test_held_deadlines.py)."""

from __future__ import annotations

import asyncio
import contextlib
import select
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from farm.server.app import Server
from farm.server.options import parse_args
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port


class Gate:
    """Holds each write of the store (``SQLiteStore._write``) until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)  # one release per write begun
        self.open = threading.Semaphore(0)  # one release per write let go
        self.shut = True
        self.failing = False  # the writes let go fail, as on a full disk
        self.store: Any = None

    def wrap(self, write: Any) -> Any:
        def gated(*args: Any) -> None:
            if self.shut:
                self.entered.release()
                assert self.open.acquire(timeout=30), "the test never let the write go"
            if self.failing:
                raise sqlite3.OperationalError("database or disk is full")
            write(*args)

        return gated

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=10), "no commit began"

    def let_one_go(self) -> None:
        self.open.release()


@contextlib.contextmanager
def gated_server(tmp_path: Path, *flags: str) -> Iterator[tuple[str, Gate, Server]]:
    """A server on 127.0.0.1 with a SQLite store whose writes wait for the test's ``Gate``."""
    port = free_port()
    args = ["--port", str(port), "--store", str(tmp_path / "q.db"), *flags]
    server = Server(parse_args(args))
    store = server.hub.store
    assert store is not None
    gate = Gate()
    store._write = gate.wrap(store._write)  # type: ignore[method-assign]  # the test's hold
    gate.store = store
    up = threading.Event()
    loop = asyncio.new_event_loop()

    async def run() -> None:
        await server.start()
        up.set()
        assert server.stopped is not None
        await server.stopped.wait()
        await server.wind_down()  # as Server.serve ends

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert up.wait(10), "the server did not start"
    try:
        yield f"127.0.0.1:{port}", gate, server
    finally:
        gate.shut = False
        for _ in range(8):  # whatever still waits goes through
            gate.let_one_go()
        loop.call_soon_threadsafe(server.stop)
        thread.join(10)
        loop.close()


def readable(peer: Peer) -> bool:
    """Whether the server has written anything to ``peer`` that it has not read (no wait:
    on loopback a write is in the peer's socket when the server's send returns)."""
    return bool(peer.pending) or bool(select.select([peer.sock], [], [], 0)[0])
