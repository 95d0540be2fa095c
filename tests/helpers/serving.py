"""A farm Worker serving functions in a thread, and the job functions tests serve."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from farm.worker import Worker


@contextmanager
def serving(
    servers: str | list[str], functions: dict[str, Callable[..., Any]], **kw: Any
) -> Iterator[Worker]:
    """A farm Worker serving ``functions`` in a thread; stopped (and checked) on exit."""
    worker = Worker(servers, **kw)
    for name, fn in functions.items():
        worker.register(name, fn)
    with working(worker):
        yield worker


@contextmanager
def working(worker: Worker) -> Iterator[Worker]:
    """``worker.work()`` in a thread, for a worker the test made (its functions may need
    it); stopped (and checked) on exit."""
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "worker did not stop"


def reverse(job: Any) -> bytes:
    return job.data[::-1]
