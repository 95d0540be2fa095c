"""Helpers shared by the client and worker integration tests (this module holds no tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from farm.worker import Worker
from tests.conftest import Server, start_farm_server, start_gearmand


@contextmanager
def serving(
    servers: str | list[str], functions: dict[str, Callable[..., Any]], **kw: Any
) -> Iterator[Worker]:
    """A farm Worker serving ``functions`` in a thread; stopped (and checked) on exit."""
    worker = Worker(servers, **kw)
    for name, fn in functions.items():
        worker.register(name, fn)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "worker did not stop"


def start_like(server: Server, port: int | None = None) -> Server:
    """Another server of the same kind (farm or gearmand), optionally on a given port."""
    return start_farm_server(port=port) if server.kind == "farm" else start_gearmand(port=port)


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Re-check a condition owned by another process until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        time.sleep(0.02)  # the state lives in another process; there is no event to wait on


def reverse(job: Any) -> bytes:
    return job.data[::-1]
