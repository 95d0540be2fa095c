"""Log lines for what may come again and again: ``Repeats``, the first of each kind in full,
then one line a while per kind naming how many were held back; ``Brief``, one kind at one
level, for refusals expected under attack. Apart from farm.logs, which sets logging up."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from typing import Any

__all__ = ["Brief", "Repeats"]


class Repeats:
    """Log lines for failures that may come job after job (a function raising the same
    exception at the same line for every bad input a caller sends): the first of each kind
    in full, then at most one line each ``every`` seconds per kind, naming how many were
    held back. Kinds are keyed by the caller; at most ``kinds`` are remembered."""

    def __init__(self, logger: logging.Logger, every: float = 10.0, kinds: int = 256) -> None:
        self.logger = logger
        self.every = every
        self.kinds = kinds
        self._due: dict[Hashable, list[float]] = {}  # kind -> [next line's time, held back]
        self._lock = threading.Lock()  # a worker's jobs may run in threads of its own

    def __call__(self, kind: Hashable, level: int, msg: str, *args: object, **kwargs: Any) -> None:
        """Log it (``kwargs`` as ``Logger.log`` takes them: ``exc_info=``, ``extra=``), or
        count it when a line of this ``kind`` went out less than ``every`` seconds ago."""
        now = time.monotonic()
        with self._lock:
            due = self._due.get(kind)
            if due is not None and now < due[0]:
                due[1] += 1
                return
            held = int(due[1]) if due is not None else 0
            if due is None and len(self._due) >= self.kinds:
                del self._due[next(iter(self._due))]  # the oldest kind
            self._due[kind] = [now + self.every, 0]
        if held:
            msg += f" (and {held} more such since the last line)"
        self.logger.log(level, msg, *args, **kwargs)


class Brief:
    """Log lines for refusals expected under attack (an unsigned call, say): no
    traceback, and at most one line each ``every`` seconds, naming how many were held
    back. A flood of them must not flood the journal, whose rate limit would then drop
    the lines that matter. (``Repeats`` with one kind, at one level.)"""

    def __init__(
        self, logger: logging.Logger, every: float = 10.0, level: int = logging.WARNING
    ) -> None:
        self.level = level
        self._one = Repeats(logger, every, kinds=1)

    def __call__(self, msg: str, *args: object, **kwargs: Any) -> None:
        """Log it (``kwargs`` as ``Logger.log`` takes them, ``extra=``), or count it."""
        self._one(None, self.level, msg, *args, **kwargs)
