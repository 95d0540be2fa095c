"""Which thread settled a future: the executor's tests tell by it which thread read a
call's reply (the one waiting in ``result()``, or the executor's pump thread)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any


class SettledBy:
    """A waiter of the future, as concurrent.futures.wait() installs one: the name of the
    thread that settled it ("" while it is not)."""

    def __init__(self, future: Future[Any]) -> None:
        self.thread = ""
        with future._condition:  # type: ignore[attr-defined]  # the Future's own, as wait() takes
            future._waiters.append(self)  # type: ignore[attr-defined]

    def add_result(self, future: Future[Any]) -> None:
        self.thread = threading.current_thread().name

    add_exception = add_cancelled = add_result
