"""The one way tests wait for state they cannot be told about."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_PAUSE = 0.005
LONGEST_PAUSE = 0.1


def wait_for(what: str, predicate: Callable[[], T], timeout: float = 10.0) -> T:
    """Re-check ``predicate`` until it returns something truthy, and return that.

    For state owned by another process or thread that offers no event to wait
    on (an admin reply, a file, a port). Pauses grow from 5 ms to 100 ms, so a
    quick answer costs little and a slow one does not spin. Past ``timeout``
    seconds it fails with an AssertionError that names ``what``.
    """
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(pause, left))  # nothing to block on: the state lives elsewhere
        pause = min(pause * 2, LONGEST_PAUSE)
