"""What the executor hands its callers: the Future of a call, and map's iterator.

``CallFuture`` reads its own reply in the waiting thread when the pump sleeps, and
leaves its done-callbacks to the pump thread (``Prompt`` ones aside); ``results``
yields map's values in order and cancels what is left when the caller stops early,
as ProcessPoolExecutor.map's iterator does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from concurrent.futures._base import FINISHED, PENDING, RUNNING
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from farm.executor.pump import Pump

T = TypeVar("T")

#: concurrent.futures' own logger, which logs a done-callback's exception.
LOGGER = logging.getLogger("concurrent.futures")


def results(
    futures: list[Future[Any]],
    end_time: float | None,
    *,
    chunked: bool,
    more: Callable[[], Future[Any] | None] | None = None,
    ended: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """The futures' results in order (with ``chunked``: the values of each chunk's list);
    what is left is cancelled if the caller stops early (the iterator is closed or dropped).
    ``more`` (a map with ``buffersize``): called before each future is waited for, its
    future (None: no more) joins the end, as in CPython's map. ``ended``: called once
    when the iterator ends, is closed or is dropped.

    While the caller holds a yielded result, nothing here refers to it or to its
    future (bpo-14406): no local names either, as in CPython's ``_result_or_cancel``.
    A chunk's values are popped from its list as they are yielded, by C code
    (``map(list.pop, ...)`` under ``chain``): a Python generator's step per value cost
    more than a tiny call's whole round trip (20,000 values: 1.8 ms, against 0.7).
    """
    futures.reverse()  # pop() from the end is O(1) and drops each reference when done
    due = _each(deque(futures) if more else futures, end_time, more, ended)
    return _ChunkValues.of(due) if chunked else due


class _ChunkValues(chain[Any]):
    """``chain`` (C iteration) with a generator's ``close()``, as ProcessPoolExecutor.map's
    iterator has: what is not due yet is cancelled at once."""

    close: Callable[[], None]

    @classmethod
    def of(cls, chunks: Generator[list[Any], None, None]) -> _ChunkValues:
        values = cls.from_iterable(map(_popping, chunks))
        assert isinstance(values, cls), "from_iterable makes an instance of the subclass"
        values.close = chunks.close
        return values


def _each(
    futures: list[Future[Any]] | deque[Future[Any]],
    end_time: float | None,
    more: Callable[[], Future[Any] | None] | None,
    ended: Callable[[], None] | None,
) -> Generator[Any, None, None]:
    try:
        while futures:
            if more is not None:
                added = more()
                if added is None:
                    more = None  # the iterables are spent (or the executor is gone)
                else:
                    futures.appendleft(added)  # type: ignore[union-attr]  # a deque with more
            left = None if end_time is None else end_time - time.monotonic()
            yield _result_or_cancel(futures.pop(), left)
    finally:
        for future in futures:
            future.cancel()
        if ended is not None:
            ended()


def _popping(chunk: list[Any]) -> Iterator[Any]:
    """The chunk's values in order, each leaving the list as it is yielded."""
    chunk.reverse()
    return map(_pop, repeat(chunk, len(chunk)))


_pop = list.pop


def _result_or_cancel(future: Future[Any], timeout: float | None) -> Any:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()  # no-op when done; frees a pending one on timeout
    finally:
        del future  # break the cycle through the exception's traceback


class Prompt:
    """A done-callback of the executor's own that is quick and takes no lock a caller may
    hold (a spill file removed, a progress bar advanced): run by the thread that settles
    the future, a thread reading its reply in ``result()`` included, so that it has run
    when ``result()`` returns (map's bar ends full). Other callbacks run in the pump thread.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Future[Any]], object]) -> None:
        self.fn = fn

    def __call__(self, future: Future[Any]) -> None:
        self.fn(future)


class CallFuture(Future[T]):
    """The Future of a call: ``result()`` and ``exception()`` read the reply in the waiting
    thread when the executor's pump thread is asleep (Pump.wait_here), sparing a hop.

    Its ``_condition`` is shared by the futures of every executor of the process
    (farm.executor.lifespan), instead of a new Condition (an RLock and a dozen bound
    methods) per call. A notification for one future
    then wakes the threads waiting for others too, so ``result()`` and ``exception()``
    wait in a loop until their own future is done or the time is up; ``wait()`` and
    ``as_completed()`` wait on their own events and only take the lock.

    Its done-callbacks run in the pump thread, as ProcessPoolExecutor runs them in its
    manager thread, also when a thread waiting in ``result()`` read the reply: that thread
    sets the outcome and wakes the waiters (``result()``, ``wait()``, ``as_completed()``),
    then hands the callbacks over (Pump.call_later). Run there, a callback held the
    caller's ``result()`` (its timeout too) for as long as it ran, even for another call's
    future, and one that took a lock the caller held while it waited deadlocked it.
    Callbacks run in the order they were added. One added to a done future runs at once in
    the adding thread, as concurrent.futures documents and Future's does, also while earlier
    ones still wait for the pump thread or run there: before them, maybe (CPython's order
    is as loose). Queued behind them, it ran later and in the pump thread, where a caller
    that added it to a call it knew done looked for its effect at once.
    """

    def __init__(self, pump: Pump, condition: threading.Condition) -> None:
        # Future.__init__'s fields, with the shared condition.
        self._condition = condition
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[Future[T]], object]] = []
        self._pump = pump

    def _invoke_callbacks(self) -> None:
        """Future's hook, called by whoever settled it (outside its lock): here, when that
        is a thread doing the pump's work, only the leading ``Prompt`` callbacks run."""
        if not self._done_callbacks:
            return
        if not self._pump.helping_here():
            self.run_callbacks()
        elif not self.run_callbacks(prompt_only=True):
            self._pump.call_later(self)  # the rest, in the pump thread

    def run_callbacks(self, *, prompt_only: bool = False) -> bool:
        """Run the done-callbacks in order, each taken off the list as it runs (Future's
        own leave theirs there: they are never run again), as Future does: an Exception
        logged, another BaseException raised, the rest then left unrun. ``prompt_only``:
        stop at the first that is no ``Prompt`` (False: it waits)."""
        callbacks = self._done_callbacks
        while True:
            with self._condition:
                if not callbacks:
                    return True
                if prompt_only and not isinstance(callbacks[0], Prompt):
                    return False
                callback = callbacks.pop(0)
            try:
                callback(self)
            except Exception:
                LOGGER.exception("exception calling callback for %r", self)

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self._pump.interrupt_reader()  # a thread may wait for it in wait_here
        return cancelled

    def result(self, timeout: float | None = None) -> T:
        if self._state != FINISHED:
            timeout = self._wait_done(self._wait_here(timeout))
        if self._state == FINISHED and self._exception is None:
            # Final: no lock to read it (set_result writes the result, then the state). A
            # `with` on the shared condition is two Python frames and two lock calls, and a
            # single call took six of them on its way; the reply read in wait_here ends here.
            return self._result  # type: ignore[return-value]  # FINISHED: the call's value
        return super().result(timeout)  # raises, or times out: the Future's own look

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._wait_done(self._wait_here(timeout)))

    def _wait_done(self, timeout: float | None) -> float:
        """Wait until done or ``timeout``; 0 for the Future's own (single) look after it."""
        if self._state != PENDING and self._state != RUNNING:
            return 0.0  # settled, for good: the Future's own look takes the lock
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._state == PENDING or self._state == RUNNING:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._condition.wait(left)
        return 0.0

    def _wait_here(self, timeout: float | None) -> float | None:
        """Wait in this thread if the pump lets it; what is left of ``timeout`` for the
        Future's own wait (wait_here returns early when other work comes)."""
        if self._state != PENDING and self._state != RUNNING:
            return timeout
        if timeout is None:
            self._pump.wait_here(self, None)
            return None
        began = time.monotonic()
        self._pump.wait_here(self, timeout)
        return max(0.0, timeout - (time.monotonic() - began))
