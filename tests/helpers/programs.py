"""Small programs of executor calls, run on any ``concurrent.futures`` executor, and what
can be seen of them: the differential test (tests/integration/test_executor_differential.py)
runs each on a ``farm.Executor`` and on a ``ProcessPoolExecutor`` and compares.

A program is a list of operations (``Submit``, ``Map``, ``Settle``, ``AsCompleted``,
``Wait``, ``Shutdown``, ``Blocked``: tests/helpers/programops.py). What ``Run`` records
of them is what both executors guarantee, so that it does not depend on timing:

* every future's outcome at the end (value, exception type, message, cause, notes; or
  cancelled), the values and the exception of a ``map``, what raised where (``submit``,
  ``map()`` itself, or its iterator), how much of a generator a map read;
* ``wait`` and ``as_completed`` on futures known to be done (or, while ``Blocked``, on
  futures that cannot be done), or else only what they promise of any set;
* ``cancel()`` only while ``Blocked``: both workers wait at a gate, three more calls fill
  what ProcessPoolExecutor has already handed to its processes (its call queue), and only
  the calls submitted after them are cancelled, which no executor can have started.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Executor,
    Future,
    as_completed,
    wait,
)
from typing import Any

from tests.helpers.differential import act, act1, block_at_gate
from tests.helpers.gate import Gate
from tests.helpers.programops import (
    AsCompleted,
    Blocked,
    Cancel,
    Map,
    Op,
    Settle,
    Shutdown,
    SourceError,
    Submit,
    Wait,
    described,
    outcome,
    value,
)
from tests.helpers.waiting import wait_for

#: How long a wait, an as_completed or a map waits while the workers are held (it times out).
HELD = 0.05
#: Calls past the two held ones that ProcessPoolExecutor(2) has already given its processes
#: (its call queue holds max_workers + 1): they cannot be cancelled there.
FILLERS = 3
WHEN = {"FIRST_COMPLETED": FIRST_COMPLETED, "FIRST_EXCEPTION": FIRST_EXCEPTION}
WHEN["ALL_COMPLETED"] = ALL_COMPLETED


class Run:
    """Runs a program on ``executor``, recording what can be seen in ``seen``."""

    def __init__(self, executor: Executor, gate: Callable[[], Gate], *, pool: bool = False) -> None:
        """``pool``: ``executor`` is a ProcessPoolExecutor (Python 3.11's): it has no
        ``buffersize`` (emulated here), and it hands calls to its processes' queue ahead
        of time, in a thread of its own."""
        self.executor = executor
        self.gate = gate
        self.pool = pool
        self.seen: list[tuple[Any, ...]] = []
        self.futures: list[Future[Any]] = []
        self.done: set[int] = set()  # futures known to be done (waited for)
        self.maybe: set[int] = set()  # may end cancelled, or not (a shutdown raced them)
        self.touched: set[int] = set()  # cancel() was called
        self.held: list[int] = []  # futures submitted while Blocked, past the fillers
        self.fillers: list[int] = []  # the FILLERS calls while Blocked
        self.unsent: set[int] = set()  # an argument did not pickle (the cause differs)
        self.blocked = False
        self.shut = False

    def run(self, program: list[Op]) -> list[tuple[Any, ...]]:
        try:
            for op in program:
                self.do(op)
            for i, future in enumerate(self.futures):
                seen = outcome(future)
                if i in self.unsent and seen[0] == "raised":
                    # The pool pickles in another thread and gives the error that
                    # thread's traceback as its cause; farm pickles in submit, and
                    # the error keeps its own traceback (docs/executor.md).
                    seen = seen[:3] + ("?",) + seen[4:]
                if i in self.maybe and seen != ("cancelled",):
                    seen = ("not cancelled", seen)
                self.seen.append(("future", i, seen))
        finally:
            self.executor.shutdown(wait=True)
        # Final now: no executor's thread is left to notify a cancelled future.
        _, not_done = wait(self.futures, timeout=0)
        left = {self.futures.index(f) for f in not_done} - self.maybe
        self.seen.append(("not done after shutdown", sorted(left)))
        return self.seen

    def do(self, op: Op) -> None:
        if isinstance(op, Submit):
            self.submit(op)
        elif isinstance(op, Map):
            self.map(op)
        elif isinstance(op, Settle) and self.futures and not self.blocked:  # would wait for good
            i = op.which % len(self.futures)
            outcome(self.futures[i])
            self.done.add(i)
        elif isinstance(op, Cancel) and self.held:
            i = self.held[op.which % len(self.held)]
            self.touched.add(i)
            self.seen.append(("cancel", i, self.futures[i].cancel()))
        elif isinstance(op, AsCompleted):
            self.as_completed(op)
        elif isinstance(op, Wait):
            self.wait(op)
        elif isinstance(op, Shutdown):
            self.shutdown(op)
        elif isinstance(op, Blocked) and not self.blocked:
            self.block(op)

    def submit(self, op: Submit) -> None:
        x: object = threading.Lock() if op.lock_argument else op.x
        try:
            if op.keyword:
                future = self.executor.submit(act, op.kind, x=x)
            else:
                future = self.executor.submit(act, op.kind, x)
        except BaseException as exc:
            self.seen.append(("submit", described(exc)))
            return
        if self.blocked:
            self.held.append(len(self.futures))
        if op.lock_argument:
            self.unsent.add(len(self.futures))
        self.futures.append(future)

    def chosen(self, which: tuple[int, ...]) -> list[int]:
        """Futures by index modulo the count, leaving out those that cancel() or a shutdown
        may have cancelled: ProcessPoolExecutor counts a cancelled future done only once its
        thread has seen it, which it may never do."""
        if not self.futures:
            return []
        return sorted({w % len(self.futures) for w in which} - self.touched - self.maybe)

    def as_completed(self, op: AsCompleted) -> None:
        """Outside Blocked, every future chosen ends, in an order timing decides; while
        Blocked, those that had ended come, then a timeout."""
        picked = self.chosen(op.which)
        yielded, error = [], None
        try:
            for future in as_completed(
                [self.futures[i] for i in picked], timeout=HELD if self.blocked else 60
            ):
                yielded.append(self.futures.index(future))
        except BaseException as exc:
            error = described(exc)
        if not self.blocked:
            self.done |= set(yielded)
        self.seen.append(("as_completed", picked, sorted(yielded), error))

    def wait(self, op: Wait) -> None:
        """Which futures are done when wait returns depends on timing, but when they were
        known to be done (or, while Blocked, could not be) and for ALL_COMPLETED; else only
        what it promises is compared."""
        picked = self.chosen(op.which)
        futures = [self.futures[i] for i in picked]
        when = WHEN[op.when]
        done, not_done = wait(futures, timeout=HELD if self.blocked else 60, return_when=when)
        seen = (sorted(self.futures.index(f) for f in done), len(not_done))
        if not (self.blocked or when == ALL_COMPLETED or set(picked) <= self.done):
            if when == FIRST_COMPLETED:
                kept = bool(done) or not futures
            else:
                kept = not not_done or any(f.exception(0) is not None for f in done)
            seen = ("kept its promise" if kept else seen, kept)
        elif when == ALL_COMPLETED and not self.blocked:
            self.done |= set(picked)
        self.seen.append(("wait", op.when, picked, seen))

    def shutdown(self, op: Shutdown) -> None:
        for i in self.unsent - self.touched - self.maybe:
            # Python 3.11's pool may hang in shutdown(cancel_futures=True) while a call
            # whose argument did not pickle is still on its way to failing.
            outcome(self.futures[i])
            self.done.add(i)
        if op.cancel_futures and not self.blocked:
            # Which calls had left the executor when it cancelled depends on timing.
            self.maybe |= set(range(len(self.futures))) - self.done
        self.executor.shutdown(wait=op.wait and not self.blocked, cancel_futures=op.cancel_futures)
        shut_before, self.shut = self.shut, True
        if self.blocked:
            waiting = [self.futures[i] for i in self.held if i not in self.touched]
            if op.cancel_futures:
                # The pool has given the fillers to its processes; farm holds them back
                # until a worker is free, and cancels them (docs/executor.md).
                self.maybe |= set(self.fillers)
                if self.pool and not shut_before:
                    # The pool cancels them in its own thread, which a second shutdown
                    # meanwhile would tell not to: the flag it clears once it has. (A
                    # second shutdown does not wake that thread: it may never look.)
                    ex: Any = self.executor
                    wait_for("the pool's cancel", lambda: not ex._cancel_pending_futures)
                self.touched |= set(self.held)  # cancelled: see chosen()
            if shut_before and op.cancel_futures:
                # A second shutdown does not wake Python 3.11's pool: when it cancels
                # them is timing's.
                self.maybe |= set(self.held)
            else:
                self.seen.append(("shutdown while held", [f.cancelled() for f in waiting]))
        elif op.wait and not shut_before:
            # (After shutdown(wait=False), Python 3.11's pool waits for nothing.)
            self.done |= set(range(len(self.futures)))
            self.seen.append(("shutdown", [f.done() for f in self.futures]))

    def block(self, op: Blocked) -> None:
        if self.shut:
            return  # nothing can be submitted to hold the workers
        for i, future in enumerate(self.futures):
            outcome(future)  # every call ended: nothing but the held ones runs
            self.done.add(i)
        with self.gate() as gate:
            for n in (1, 2):  # one at a time: each alone on its worker
                self.futures.append(self.executor.submit(block_at_gate, gate.path))
                gate.arrived(n)
            self.fillers = list(range(len(self.futures), len(self.futures) + FILLERS))
            self.futures += [self.executor.submit(act, "value", 1000 + i) for i in range(FILLERS)]
            if self.pool:  # what the pool does with them next depends on its thread: wait
                fillers = [self.futures[i] for i in self.fillers]
                wait_for("the pool's call queue", lambda: all(f.running() for f in fillers))
            self.blocked = True
            try:
                for inner in op.ops:
                    self.do(inner)
            finally:
                self.blocked = False
                self.held = self.fillers = []

    def map(self, op: Map) -> None:
        read = [0]  # items the generator gave
        if op.generator:
            xs: Any = _source(op.xs, op.raise_at, read)
        else:
            xs = list(op.xs)
        iterables = (xs,) if op.kinds is None else (list(op.kinds), xs)
        fn = act1 if op.kinds is None else act
        if op.buffersize is not None and self.pool:
            self.seen.append(("map", *_buffered(self.executor, fn, op, self.shut)))
            return
        extra = {} if op.buffersize is None else {"buffersize": op.buffersize}
        try:
            it = self.executor.map(
                fn, *iterables, timeout=op.timeout, chunksize=op.chunksize, **extra
            )
        except BaseException as exc:
            self.seen.append(("map", "at call", described(exc), read[0]))
            return
        values, error = _take(it, op.take)
        del it  # dropped, as a caller that stops early drops it
        self.seen.append(("map", values, error, read[0]))


def _source(xs: tuple[int, ...], raise_at: int | None, read: list[int]) -> Iterator[int]:
    for i, x in enumerate(xs):
        if i == raise_at:
            raise SourceError(f"the source broke at {i}")
        read[0] += 1
        yield x
    if raise_at == len(xs):
        raise SourceError(f"the source broke at {raise_at}")


def _take(it: Iterator[Any], take: int | None) -> tuple[list[Any], tuple[Any, ...] | None]:
    values: list[Any] = []
    try:
        while take is None or len(values) < take:
            try:
                values.append(value(next(it)))
            except StopIteration:
                break
    except BaseException as exc:
        return values, described(exc)
    return values, None


def _buffered(executor: Executor, fn: Callable[..., Any], op: Map, shut: bool) -> tuple[Any, ...]:
    """What Python 3.14's ``map(..., buffersize=op.buffersize)`` shows, on an executor
    without it: the calls' outcomes from a plain map, the reading of the iterables as
    3.14's does it (``buffersize`` chunks at the call, one more before each chunk's
    result is waited for; a chunk that the generator breaks in is lost)."""
    assert op.buffersize is not None
    size, ahead = op.chunksize, op.buffersize
    n = len(op.xs) if op.kinds is None else min(len(op.xs), len(op.kinds))
    breaks = None if op.raise_at is None else op.raise_at // size  # the chunk it breaks in
    broke = ("raised", "SourceError", f"the source broke at {op.raise_at}", None, ())

    def given(chunks: int) -> int:  # items the generator gave for that many chunks
        return min(n, chunks * size) if op.generator else 0

    if breaks is not None and breaks < ahead and not (shut and breaks > 0):
        return ("at call", broke, op.raise_at)  # (shut down: the first chunk's submit raises)
    m = n if op.raise_at is None else op.raise_at
    iterables = (list(op.xs[:m]),) if op.kinds is None else (list(op.kinds), list(op.xs[:m]))
    try:
        it = executor.map(fn, *iterables, timeout=op.timeout, chunksize=size)
    except BaseException as exc:  # shut down: the first chunk's submit raised
        return ("at call", described(exc), given(1))
    plain, error = _take(it, None)  # every chunk's values up to the first that failed
    del it
    failed = len(plain) // size if error is not None else None
    chunks = -(-n // size)
    queued: deque[int] = deque(range(min(ahead, chunks)))
    read = len(queued)
    values: list[Any] = []
    current: deque[Any] = deque()
    while op.take is None or len(values) < op.take:
        if current:
            values.append(current.popleft())
            continue
        if not queued:
            break
        if read == breaks:
            return (values, broke, op.raise_at)
        if read < chunks:
            queued.append(read)
            read += 1
        chunk = queued.popleft()
        if chunk == failed:
            return (values, error, given(read))
        current.extend(plain[chunk * size : (chunk + 1) * size])
    return (values, None, given(read))
