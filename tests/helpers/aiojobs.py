"""farm.AsyncClient's tests' jobs (one that reports as it goes, one that raises, one that
waits at a gate) and a runner for async tests that needs no pytest plugin.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from farm.worker import Job


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
