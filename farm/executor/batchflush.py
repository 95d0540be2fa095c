"""A running batch's outcomes on their way to the caller (farm.executor.call._run_batch).

The worker runs a batch's calls one after another in its main thread and sends the outcomes
it has at most every ``BATCH_FLUSH_EVERY`` (each WORK_DATA wakes the server and the caller),
as a call ends. Sent only then, the outcomes of quick calls waited for the slow call after
them: behind a call of 20 s, a call of 1 ms was answered 20 s late, and ran again when that
worker died. So the worker's ``flusher`` thread looks every ``LOOK_EVERY`` at the batch
that runs, and sends what has waited ``BATCH_FLUSH_EVERY`` though a call still runs.

The main thread adds outcomes without a lock (a list's append, under the GIL) and takes
``Outgoing.sending`` only to send, as the thread does: one of them sends a part, and none
after the batch's answer. The thread's send is a try: a value that a running call changes
while it is pickled (a ``__reduce__`` of Python code lets that call run on meanwhile) may
fail to pickle, and it is then left to the main thread, which pickles it between calls
(whose failure is that call's error, ``outcomes.dump_batch``), as a large part is. A value a
later call of the batch changes is sent as it is at the send, as it always was. The thread
ends after ``IDLE_EXIT`` without a batch (a worker that runs single calls holds none).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BATCH_FLUSH_EVERY", "LOOK_EVERY", "IDLE_EXIT", "Outgoing", "Flusher", "flusher"]

log = logging.getLogger("farm.executor")

#: A running batch sends the outcomes it has at most this often (seconds). Each WORK_DATA
#: wakes the server and the caller: every 20 ms, 200 calls of 20 ms on 2 workers ran at
#: 96.1% of ideal; every 50 ms at 97.4%, every 100 ms at 98.1% (one run, medians of six).
BATCH_FLUSH_EVERY = 0.1
#: How often the thread looks at the batch that runs (a wake-up each, only while batches run).
LOOK_EVERY = BATCH_FLUSH_EVERY / 2
#: Seconds the thread waits for a batch before it ends (the next batch starts another).
IDLE_EXIT = 5.0

#: ``send(first, outcomes)`` sends a part from the main thread (pickling it as it must);
#: ``send_pickled(first, pickled)`` one the thread pickled.
Send = Callable[[int, list[Any]], None]
SendPickled = Callable[[int, bytes], None]


class Outgoing:
    """A batch's outcomes not sent yet, from index ``first`` on."""

    def __init__(self, send: Send, send_pickled: SendPickled, calls: int, limit: int) -> None:
        self._send = send
        self._send_pickled = send_pickled
        self.calls = calls
        self.limit = limit  # a part past this pickled size is the main thread's (spill)
        self.first = 0
        self.outcomes: list[Any] = []
        self.sent_at = time.monotonic()  # the batch's start, then its last part's
        self.sending = threading.Lock()
        self.open = True  # False once the answer is made: nothing leaves ahead after it
        flusher.watch(self)

    def add(self, index: int, outcome: Any) -> None:
        """Call ``index`` ended with ``outcome`` (the main thread's, between calls)."""
        self.outcomes.append(outcome)
        if index + 1 < self.calls and time.monotonic() - self.sent_at >= BATCH_FLUSH_EVERY:
            with self.sending:
                count = len(self.outcomes)  # the thread may have sent them just now
                if count:
                    self._send(self.first, self.outcomes[:count])
                    self._sent(count)

    def finish(self) -> tuple[int, list[Any]]:
        """What the batch's answer carries: no part leaves ahead from here on."""
        with self.sending:
            self.open = False
        flusher.watch(None)
        return self.first, self.outcomes

    def send_due(self) -> None:
        """The thread's look: send what waits, a part at most every ``BATCH_FLUSH_EVERY``,
        if it pickles now (else the main thread sends it, between calls)."""
        if not self.outcomes or time.monotonic() - self.sent_at < BATCH_FLUSH_EVERY:
            return
        with self.sending:
            count = len(self.outcomes)
            if not self.open or not count:
                return
            try:
                pickled = pickle.dumps((self.first, self.outcomes[:count]), pickle.HIGHEST_PROTOCOL)
            except BaseException:  # changed under it, or no pickle: the main thread's
                return
            if len(pickled) <= self.limit:
                self._send_pickled(self.first, pickled)
                self._sent(count)

    def _sent(self, count: int) -> None:
        del self.outcomes[:count]  # those added meanwhile stay
        self.first += count
        self.sent_at = time.monotonic()


class Flusher:
    """The worker's thread that looks at the batch that runs (``watch``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch: Outgoing | None = None
        self._thread: threading.Thread | None = None
        self._last = 0.0  # when a batch was last watched

    def watch(self, batch: Outgoing | None) -> None:
        """The batch that runs now (None: none)."""
        self._batch = batch
        self._last = time.monotonic()
        if batch is not None and self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="farm-batch", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(LOOK_EVERY)
            batch = self._batch
            if batch is None:
                with self._lock:
                    if self._batch is None and time.monotonic() - self._last > IDLE_EXIT:
                        self._thread = None  # the next batch starts another
                        return
                continue
            try:
                batch.send_due()
            except Exception:  # a bug: what waits goes with the batch's answer
                log.exception("sending a batch's outcomes ahead failed")


#: The worker's one flusher: it runs one batch at a time.
flusher = Flusher()
