"""A running batch's outcomes on their way to the caller (farm.executor.call._run_batch).

The worker runs a batch's calls one after another in its main thread and sends the outcomes
it has at most every ``BATCH_FLUSH_EVERY`` (each WORK_DATA wakes the server and the caller),
as a call ends. Sent only then, the outcomes of quick calls waited for the slow call after
them: behind a call of 20 s, a call of 1 ms was answered 20 s late, and ran again when that
worker died. So a batch that runs past ``LONG_AFTER`` goes on differently: each outcome is
pickled as its call returns (``Pickled``: what a later call of the batch changes is not
what was returned, as with ProcessPoolExecutor), and the worker's ``flusher`` thread sends
what waits once its time comes, though a call still runs. A batch of tiny calls that ends
sooner (most) pays neither the pickling nor the lock. Job news may be sent from any thread
(farm.workernews). The thread ends after ``IDLE_EXIT`` seconds without a long batch, so a
worker that runs short ones holds no thread of its own (a call that forks meets none).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from farm.executor.outcomes import dump_outcome

__all__ = ["BATCH_FLUSH_EVERY", "LONG_AFTER", "IDLE_EXIT", "Outgoing", "Pickled", "flusher"]

log = logging.getLogger("farm.executor")

#: A running batch sends the outcomes it has at most this often (seconds). Each WORK_DATA
#: wakes the server and the caller: every 20 ms, 200 calls of 20 ms on 2 workers ran at
#: 96.1% of ideal; every 50 ms at 97.4%, every 100 ms at 98.1% (one run, medians of six).
BATCH_FLUSH_EVERY = 0.1
#: A batch running this long has its outcomes pickled as they come, and sent by the thread.
LONG_AFTER = BATCH_FLUSH_EVERY / 2
#: Seconds the thread waits for a long batch before it ends (a later one starts another).
IDLE_EXIT = 5.0


class Pickled:
    """An outcome pickled as its call returned: pickled again, it is those bytes, which the
    caller's unpickling of the batch turns back into the outcome (no class of farm's on the
    wire: a caller of any farm reads it)."""

    __slots__ = ("data",)

    def __init__(self, outcome: Any) -> None:
        self.data = dump_outcome(outcome)

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.data,))


class Flusher:
    """Runs a send once its time comes, unless taken back first (``cancel``)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()  # held to touch what a long batch sends
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
        """No send from here on (the caller holds ``lock``)."""
        self._due = self._send = None

    def _run(self) -> None:
        with self.lock:
            while True:
                if self._due is None:
                    if not self.lock.wait(IDLE_EXIT) and self._due is None:
                        self._thread = None  # a later long batch starts another
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
                except Exception:  # a bug: what waits goes with the batch's answer
                    log.exception("sending a batch's outcomes ahead failed")


#: The worker's one flusher: it runs one batch at a time.
flusher = Flusher()


class Outgoing:
    """A batch's outcomes not sent yet, from index ``first`` on; ``send(first, outcomes)``
    sends a part ahead (WORK_DATA)."""

    def __init__(self, send: Callable[[int, list[Any]], None], calls: int) -> None:
        self._send = send
        self.calls = calls
        self.first = 0
        self.outcomes: list[Any] = []
        now = time.monotonic()
        self.due = now + BATCH_FLUSH_EVERY  # when what waits must go
        self.long_at = now + LONG_AFTER
        self.long = False

    def add(self, index: int, outcome: Any) -> None:
        """Call ``index`` ended with ``outcome`` (the main thread's, between calls)."""
        more = index + 1 < self.calls
        if not self.long:
            self.outcomes.append(outcome)
            if not more:
                return
            now = time.monotonic()
            if now >= self.due:
                self._flush()
            elif now >= self.long_at:
                self.long = True
                with flusher.lock:
                    self.outcomes = [Pickled(o) for o in self.outcomes]
                    if self.outcomes:
                        flusher.arm(self.due, self._flush_due)
            return
        pickled = Pickled(outcome)  # outside the lock: the thread may send meanwhile
        with flusher.lock:
            self.outcomes.append(pickled)
            if not more:
                return
            if len(self.outcomes) == 1:  # the first waiting since a part left
                self.due = time.monotonic() + BATCH_FLUSH_EVERY
                flusher.arm(self.due, self._flush_due)
            elif time.monotonic() >= self.due:
                flusher.cancel()
                self._flush()

    def finish(self) -> tuple[int, list[Any]]:
        """What the batch's answer carries: no part is sent ahead from here on."""
        if self.long:
            with flusher.lock:
                flusher.cancel()
        return self.first, self.outcomes

    def _flush_due(self) -> None:
        if self.outcomes:  # the flusher's thread, under the lock
            self._flush()

    def _flush(self) -> None:
        self._send(self.first, self.outcomes)
        self.first += len(self.outcomes)
        self.outcomes = []
        self.due = time.monotonic() + BATCH_FLUSH_EVERY
