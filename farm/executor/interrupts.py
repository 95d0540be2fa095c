"""A Ctrl-C that lands while the caller's thread does the pump's work waits until that
work is whole.

A thread waiting in ``result()`` reads its own replies, and ``submit`` sends its own call
(farm.executor.waithere, farm.executor.pump): they decode results, settle futures and
register what was sent. A KeyboardInterrupt raised half-way through left that
bookkeeping half done, so the executor had to break (every call in flight failed, and
every later submit), where ProcessPoolExecutor, which does all of it in its own thread,
survives a Ctrl-C. In the main thread, while Python's own handler is the SIGINT handler,
the signal is held for the length of that work and raised as KeyboardInterrupt right
after it; anywhere else (another thread, a handler of the program's own) nothing changes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["HeldInterrupt", "whole"]


class HeldInterrupt(KeyboardInterrupt):
    """A Ctrl-C held until the work was whole: raised after it, so nothing is half done
    (a KeyboardInterrupt raised inside the work itself is not one)."""


@contextmanager
def whole() -> Iterator[None]:
    """Run the block with a Ctrl-C held back until it ends (see the module docstring)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise HeldInterrupt
