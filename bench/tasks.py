"""What the benchmarks' workers run: imported by name (``bench.tasks``) in the workers, as
real programs' functions travel; a function defined in a module run as ``__main__`` would
travel by value instead."""

from __future__ import annotations

import signal
import time

__all__ = ["burn", "hog", "tiny"]


def tiny(x: int) -> int:
    return x + 1


def burn(ms: float) -> float:
    """Spin for ``ms`` of this thread's CPU time (not wall time: preemption does not help)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass
    return ms


def hog() -> None:
    """A busy loop until killed (the hogs pass)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        pass
