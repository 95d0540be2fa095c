"""A running batch's outcomes sent while its next call runs (farm.executor.call._run_batch).

The worker runs a batch's calls one after another in its main thread, and sends the
outcomes it has at most every ``BATCH_FLUSH_EVERY`` (each WORK_DATA wakes the server and
the caller). Sent only between calls, a finished call's outcome waited for the calls after
it: behind a call of 20 s, a call of 1 ms answered 20 s late, and ran again when that
worker died, its outcome never sent. So the sending is this thread's: armed when a first
outcome waits, it sends what waits once its time comes while a call still runs, under the
lock the main thread takes to add an outcome (a call that ends past that time sends them
itself). At most one wake-up per send, none per call.

The thread ends after ``IDLE_EXIT`` seconds without a batch, so a worker that runs single
calls only holds no thread of its own (a call that forks meets no other thread). Job news
may be sent from any thread (farm.workernews).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Flusher", "Waiting", "flusher", "IDLE_EXIT"]

log = logging.getLogger("farm.executor")

#: Seconds the thread waits for a batch before it ends (a new batch starts it again).
IDLE_EXIT = 5.0


class Flusher:
    """Runs a send once its time comes, unless taken back first (``cancel``)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()  # the main thread holds it to touch what is sent
        self._due: float | None = None
        self._send: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None

    def arm(self, at: float, send: Callable[[], None]) -> None:
        """Call ``send`` at monotonic ``at`` (under ``lock``, which the caller holds now)."""
        self._due, self._send = at, send
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="farm-batch", daemon=True)
            self._thread.start()
        else:
            self.lock.notify()

    def cancel(self) -> None:
        """No send from here on (the caller holds ``lock``): the batch's end sends the rest."""
        self._due = self._send = None

    def _run(self) -> None:
        with self.lock:
            while True:
                if self._due is None:
                    if not self.lock.wait(IDLE_EXIT) and self._due is None:
                        self._thread = None  # a later batch starts another
                        return
                    continue
                wait = self._due - time.monotonic()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                send, self._due, self._send = self._send, None, None
                if send is None:
                    continue
                try:
                    send()
                except Exception:  # a bug: the batch's end sends these outcomes again
                    log.exception("sending a batch's outcomes ahead failed")


class Waiting:
    """A batch's outcomes not sent yet, from index ``first`` on (under ``Flusher.lock``)."""

    __slots__ = ("first", "outcomes", "due")

    def __init__(self) -> None:
        self.first = 0
        self.outcomes: list[Any] = []
        self.due = 0.0  # when the first of them must be sent (monotonic)


#: The worker's one flusher: it runs one batch at a time.
flusher = Flusher()
