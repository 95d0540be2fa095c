"""Calls of the differential test (tests/integration/test_executor_differential.py): the
farm's workers and ProcessPoolExecutor's processes import them from here, by reference.

``act(kind, x)`` does one of the things a call can do (``KINDS``); ``act1(x)`` picks the
kind from ``x``, so that a ``map`` over one iterable of ints mixes them.
"""

from __future__ import annotations

import threading
import time

from tests.helpers.calls import ExitsWhenPickled, wait_gate

#: What a call may do with its ``x``: return it (doubled, or after a nap, or a large
#: value), raise (an exception of several kinds, one that will not pickle, SystemExit,
#: StopIteration: which a map must not take for its end), or return what will not pickle.
KINDS = (
    "value",
    "nap",
    "ValueError",
    "KeyError",
    "CustomError",
    "chained",
    "LockedError",
    "lock result",
    "exits when pickled",
    "SystemExit",
    "KeyboardInterrupt",
    "large",
    "StopIteration",
)

#: Bytes of a "large" result: over the spill threshold (1 MiB), so it travels as a file.
LARGE = (1 << 20) + 100


class CustomError(Exception):
    """An exception of the test's own, with two arguments."""


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, x: int) -> None:
        super().__init__(x)
        self.lock = threading.Lock()


def act(kind: str, x: int) -> object:
    """Do what ``kind`` says with ``x`` (see KINDS)."""
    if kind == "value":
        return x * 2
    if kind == "nap":
        time.sleep(0.01 + (x % 3) / 100)  # a call that takes a while, a few ms
        return x
    if kind == "ValueError":
        raise ValueError(f"bad {x}")
    if kind == "KeyError":
        raise KeyError(x)
    if kind == "CustomError":
        raise CustomError(x, "second")
    if kind == "chained":
        try:
            raise KeyError(x)
        except KeyError as exc:
            raise RuntimeError(f"chained {x}") from exc
    if kind == "LockedError":
        raise LockedError(x)
    if kind == "lock result":
        return threading.Lock()
    if kind == "exits when pickled":
        return ExitsWhenPickled()
    if kind == "SystemExit":
        raise SystemExit(x)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt(x)
    if kind == "large":
        return bytes([x % 256]) * LARGE
    if kind == "StopIteration":
        return next(iter(()))  # the slip that raises it: next() of an empty input
    raise AssertionError(f"unknown kind {kind!r}")


def act1(x: int) -> object:
    """``act`` of the kind ``x`` picks: a map over ints mixes kinds."""
    return act(KINDS[x % len(KINDS)], x)


def block_at_gate(path: str) -> str:
    """Wait at the test's gate (tests.helpers.gate.Gate) until it opens."""
    wait_gate(path)
    return "opened"
