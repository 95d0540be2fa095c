"""A running batch's outcomes on their way to the caller (farm.executor.call._run_batch).

The worker runs a batch's calls one after another in its main thread and sends the outcomes
it has at most every ``BATCH_FLUSH_EVERY`` (each WORK_DATA wakes the server and the caller),
as a call ends. Sent only then, the outcomes of quick calls waited for the slow call after
them: behind a call of 20 s, a call of 1 ms was answered 20 s late, and ran again when that
worker died. So the worker's ``flusher`` thread looks every ``LOOK_EVERY`` at the batch
that runs, and sends what has waited ``BATCH_FLUSH_EVERY`` though a call still runs.

The thread pickles only what no call can change: values of immutable types (``settled``:
numbers, None, strings and bytes within the spill limit, tuples of numbers), and outcomes
the main thread pickled as
their call returned (``Pickled``, as ProcessPoolExecutor pickles each result). Pickled by
the thread while a later call changed it, a returned dict came back as an error, and a
list mixed from two moments of that call. An outcome too large to keep twice (past the
spill limit) or holding code pickled by value (whose check the caller makes on the part as
a whole: farm.executor.bytecode) stays as it is, and the thread sends only what is before
it (``raw_from``); the main thread sends the rest, between calls, and a part the thread
finds past the limit (the main thread's ``_seal_batch`` splits it, so that only a call
whose own outcome is past the farm's limit fails). The main thread adds
outcomes without a lock (a list's append, under the GIL) and takes ``Outgoing.sending``
only to send, as the thread does: one of them sends a part, and none after the batch's
answer. The thread ends after ``IDLE_EXIT`` without a batch (a worker that runs single
calls holds none).

Under a pool's ``timeout`` the batch has a ``deadline`` (3/4 of the timeout after the job
came). A call still running past it will likely outrun the timeout, and its worker's death
would fail the calls after it, which never started. So the thread cuts the batch there
(``cut``): it sends a part of no outcomes whose index is the first call not started (a
caller from before this change reads it as nothing), the caller sends those calls again,
first, as its window has room (a caller of one worker: once this job ends), and the main
thread starts none of them (``may_start``, under the same lock). A rerun of the job after
this worker died otherwise (``job_retries``) runs them again, as it runs every call of the
batch: such calls may run twice, as the finished ones may (docs/executor.md).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from farm.executor.bytecode import by_value
from farm.executor.outcomes import dump_outcome
from farm.executor.payload import OK

__all__ = [
    "BATCH_FLUSH_EVERY",
    "LOOK_EVERY",
    "IDLE_EXIT",
    "Outgoing",
    "Pickled",
    "Flusher",
    "flusher",
    "settled",
]

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
#: ``send_pickled(first, count, pickled)`` one the thread pickled.
Send = Callable[[int, list[Any]], None]
SendPickled = Callable[[int, int, bytes], None]

_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None)})
_SIZED = frozenset({str, bytes})  # immutable, but as large as they come


def settled(outcome: Any, limit: int) -> bool:
    """Whether nothing can change this outcome: a value of an immutable type, or a tuple of
    them (what tiny calls mostly return), not an error (its exception is an object); a
    string or bytes past ``limit`` is not (it is the main thread's, which spills it alone)."""
    if type(outcome) is not tuple or len(outcome) != 2 or outcome[0] != OK:
        return False
    value = outcome[1]
    kind = type(value)
    if kind in _SIZED:
        return len(value) <= limit
    return kind in _IMMUTABLE or (
        kind is tuple and all(type(v) in _IMMUTABLE and type(v) not in _SIZED for v in value)
    )


class Pickled:
    """An outcome pickled as its call returned: pickled again, it is those bytes, which the
    caller's unpickling of the part turns back into the outcome (no class of farm's on the
    wire: a caller of any farm reads it)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, outcome: Any, limit: int) -> Pickled | None:
        """``outcome`` pickled now; None where it stays as it is (past ``limit``, or code
        pickled by value, which the caller checks on the whole part)."""
        data = dump_outcome(outcome)
        return None if len(data) > limit or by_value(data) else cls(data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.data,))


class Outgoing:
    """A batch's outcomes not sent yet, from index ``first`` on."""

    def __init__(
        self,
        send: Send,
        send_pickled: SendPickled,
        calls: int,
        limit: int,
        deadline: float | None = None,
    ) -> None:
        self._send = send
        self._send_pickled = send_pickled
        self.calls = calls
        self.limit = limit  # the spill limit: an outcome past it is not pickled twice
        self.first = 0
        self.outcomes: list[Any] = []
        self.raw_from: int | None = None  # the index of the first outcome kept as it is
        self.refused: tuple[int, int] | None = None  # a part the thread found too large
        self.sent_at = time.monotonic()  # the batch's start, then its last part's
        self.sending = threading.Lock()
        self.open = True  # False once the answer is made: nothing leaves ahead after it
        self.deadline = deadline  # time.monotonic() past which the calls not started go back
        self.cut: int | None = None  # the index of the first call given back to the caller
        flusher.watch(self)

    def add(self, index: int, outcome: Any) -> None:
        """Call ``index`` ended with ``outcome`` (the main thread's, between calls)."""
        if not settled(outcome, self.limit):
            snapshot = Pickled.of(outcome, self.limit)
            if snapshot is not None:
                outcome = snapshot
            elif self.raw_from is None:
                self.raw_from = index  # the thread sends none from here on (main's)
        self.outcomes.append(outcome)
        if index + 1 < self.calls and time.monotonic() - self.sent_at >= BATCH_FLUSH_EVERY:
            with self.sending:
                count = len(self.outcomes)  # the thread may have sent them just now
                if count:
                    self._send(self.first, self.outcomes[:count])
                    self._sent(count)
                    self.raw_from = None

    def finish(self) -> tuple[int, list[Any]]:
        """What the batch's answer carries: no part leaves ahead from here on."""
        with self.sending:
            self.open = False
        flusher.watch(None)
        return self.first, self.outcomes

    def may_start(self, index: int) -> bool:
        """Whether call ``index`` may start: not once the thread gave it back (``cut_due``).
        The main thread asks before each call, under a pool's timeout only."""
        with self.sending:
            return self.cut is None or index < self.cut

    def cut_due(self) -> None:
        """The thread's look past the deadline: give back the calls after the one that runs
        (a part of no outcomes, its index the first of them), once."""
        if self.cut is not None or self.deadline is None or time.monotonic() < self.deadline:
            return
        with self.sending:
            cut = self.first + len(self.outcomes) + 1  # the call running (or next) runs on
            if not self.open or self.cut is not None or cut >= self.calls:
                return
            self.cut = cut
            self._send_pickled(cut, 0, pickle.dumps((cut, []), pickle.HIGHEST_PROTOCOL))

    def send_due(self) -> None:
        """The thread's look: send what waits, a part at most every ``BATCH_FLUSH_EVERY``
        (only what no call can change: see the module's docstring)."""
        if not self.outcomes or time.monotonic() - self.sent_at < BATCH_FLUSH_EVERY:
            return
        with self.sending:
            count = len(self.outcomes)
            if self.raw_from is not None:
                count = min(count, self.raw_from - self.first)
            if not self.open or count <= 0:
                return
            if (self.first, count) == self.refused:
                return  # no new outcome since: pickled for nothing again
            pickled = pickle.dumps((self.first, self.outcomes[:count]), pickle.HIGHEST_PROTOCOL)
            if len(pickled) > self.limit:  # many: the main thread splits them (_seal_batch)
                self.refused = (self.first, count)
                return
            self._send_pickled(self.first, count, pickled)
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
                batch.cut_due()
                batch.send_due()
            except Exception:  # a bug: what waits goes with the batch's answer
                log.exception("sending a batch's outcomes ahead failed")


#: The worker's one flusher: it runs one batch at a time.
flusher = Flusher()
