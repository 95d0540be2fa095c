"""The unit tests run in one process (per xdist worker): what one test leaves running there
meets the next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from farm.executor import batchflush
from tests.helpers.waiting import wait_for


@pytest.fixture(autouse=True)
def no_batch_thread_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A batch run in this process (farm.executor.call._run_batch) starts the worker's
    flusher thread, which waits 5 s for the next batch: a later test that forks then got
    Python's warning of a fork in a process with threads. It ends with its test."""
    yield
    if batchflush.flusher._thread is not None:
        monkeypatch.setattr(batchflush, "IDLE_EXIT", 0.0)
        wait_for("the batch thread's end", lambda: batchflush.flusher._thread is None)
