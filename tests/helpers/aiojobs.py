"""farm.AsyncClient's tests' jobs (one that reports as it goes, one that raises, one that
waits at a gate), a runner for async tests that needs no pytest plugin, and the served
fixture (workers serving those jobs), which a test module takes as `served = aiojobs.served`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from farm.worker import Job, Worker
from tests.helpers.servers import Server


def chatty(job: Job) -> bytes:
    """Reports progress, a data chunk and a warning before its result."""
    job.send_status(1, 3)
    job.send_data(b"part:" + job.data)
    job.send_warning(b"careful")
    job.send_status(3, 3)
    return job.data.upper()


def explode(job: Job) -> bytes:
    raise ValueError(f"cannot handle {job.text}")


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


gate = threading.Event()


def gated(job: Job) -> bytes:
    gate.wait(30)
    return b"opened:" + job.data


@pytest.fixture
def served(any_server: Server) -> Iterator[Server]:
    """Two worker threads (so one may block in ``gated`` while the other serves)."""
    workers = []
    for _ in range(2):
        w = Worker(any_server.addr)
        w.register("reverse", lambda job: job.data[::-1])
        w.register("chatty", chatty)
        w.register("explode", explode)
        w.register("gated", gated)
        workers.append(w)
    threads = [threading.Thread(target=w.work, daemon=True) for w in workers]
    for t in threads:
        t.start()
    gate.clear()
    yield any_server
    gate.set()
    for w in workers:
        w.stop()
    for t in threads:
        t.join(10)
