"""``Executor.map``'s calls: its iterables read into chunks, each pickled on the caller's
thread and handed to the executor (``Hand``), all at once or ``buffersize`` ahead.

Over lists, tuples and ranges (which cannot block), calls are queued and handed over
every ``NUDGE_EVERY`` seconds and at the end of the read, and go out in batches
(farm.executor.flight). A send per call from this thread would cost more than the call
itself (tiny calls); and the pump thread, which would batch them, waits for the GIL that
this loop holds while it pickles. The first call waits too: sent at once, its job's
round trip took the CPU of the loop that pickled the rest, which then took twice as long
(maps of 20,000 tiny calls in chunks of 500 on 2 cores: 3.0-3.1 ms at the 10th percentile
against 3.1-3.3 when it went at once; a read with ``buffersize`` still sends its first at
once). Handing the calls over in shares while the loop pickled, so that more workers
started sooner, ran no faster (3.9-4.5 ms against 3.4-4.4): they took the CPU the loop
pickled on. Calls read from anything else (a generator may wait for input, or for the
calls already read to run) are handed over as they are read.

With ``buffersize`` (Python 3.14's ``Executor.map``): only that many chunks are read
before results are asked for, and each result asked for reads one more (``more``), so an
endless generator can be mapped, and a ``map`` left early leaves the rest unread.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

from farm.executor import lifespan, spill
from farm.executor.flight import Call
from farm.executor.payload import ARG_CHUNK, CHUNK, SINGLE, dump_call, note_chunk

if TYPE_CHECKING:
    from farm.executor.progress import Bar

__all__ = ["Hand", "MapCalls", "NUDGE_EVERY", "check_buffersize", "more_of", "once", "weak_hand"]

#: How long map() may queue calls before it hands them to the pump (see the docstring).
NUDGE_EVERY = 0.002
#: Iterables whose reading cannot block: map may queue their calls (see the docstring).
_IN_MEMORY = (list, tuple, range)


class Hand(NamedTuple):
    """How a map hands its calls to its executor."""

    #: (call, or None with the error its future fails with; hold: queue it only)
    enqueue: Callable[[Call | None, Exception | None, bool], Future[Any]]
    #: (pickled function, kind, pickled calls over the spill threshold)
    spilled: Callable[[bytes, int, bytes], Future[Any]]
    #: send what was queued (held)
    nudge: Callable[[], None]


def check_buffersize(buffersize: object) -> None:
    """Python 3.14's checks, with its messages."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


class MapCalls:
    """One map's calls: ``read`` pickles chunks of them and hands them over."""

    def __init__(
        self,
        fn_bytes: bytes | None,
        fn_error: Exception | None,
        iterables: tuple[Iterable[Any], ...],
        chunksize: int,
        *,
        lazy: bool = False,
    ) -> None:
        """``lazy``: read as results are asked for (buffersize), not all at once."""
        self.fn_bytes = fn_bytes  # None: the function did not pickle (fn_error says why)
        self.fn_error = fn_error
        if chunksize > 1 and len(iterables) == 1:
            # One iterable: each chunk is a list of the arguments themselves (ARG_CHUNK),
            # not of 1-tuples, which cost more to build, pickle and unpickle.
            calls: Iterator[Any] = iter(iterables[0])
            self.kind = ARG_CHUNK
        else:
            calls = zip(*iterables, strict=False)  # the shortest iterable ends it
            self.kind = SINGLE if chunksize == 1 else CHUNK
        self._chunks: Iterator[list[Any]] = iter(lambda: list(islice(calls, chunksize)), [])
        if self.kind == ARG_CHUNK and type(iterables[0]) is list and not lazy:
            # A slice is 3x faster to make; read at once, the list cannot change meanwhile
            # (read lazily it may, and a list iterator sees what was added: as builtins.map).
            self._chunks = _slices(iterables[0], chunksize)
        self.may_hold = all(type(it) in _IN_MEMORY for it in iterables)
        self.sizes: list[int] = []  # calls per future, for the progress bar

    def read(self, hand: Hand, futures: list[Future[Any]], limit: int | None = None) -> None:
        """Read up to ``limit`` chunks (None: all), appending each one's future to ``futures``
        as it is handed over; what is held goes out before this returns, or raises."""
        hold_until = time.monotonic() + NUDGE_EVERY if limit is None else 0.0  # see above
        kind = self.kind
        try:
            for chunk in self._chunks if limit is None else islice(self._chunks, limit):
                self.sizes.append(len(chunk))
                if self.fn_bytes is None:
                    futures.append(hand.enqueue(None, self.fn_error, False))
                    continue
                try:
                    body = dump_call((chunk[0], {})) if kind == SINGLE else dump_call(chunk)
                except Exception as exc:  # unpicklable: that chunk's future says so
                    note_chunk(exc, chunk, kind, sum(self.sizes) - len(chunk))
                    futures.append(hand.enqueue(None, exc, False))
                    continue
                if len(body) > spill.SPILL_THRESHOLD:
                    futures.append(hand.spilled(self.fn_bytes, kind, body))
                    continue
                hold = False
                if self.may_hold:
                    now = time.monotonic()
                    hold = now < hold_until
                    if not hold:
                        hold_until = now + NUDGE_EVERY
                futures.append(hand.enqueue(Call(self.fn_bytes, kind, body), None, hold))
        finally:
            hand.nudge()


def _slices(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def more_of(
    owner: Callable[[], Hand | None],
    calls: MapCalls,
    used: Callable[[list[Future[Any]]], None],
    bar: Bar | None,
) -> Callable[[], Future[Any] | None]:
    """The ``more`` of a map with ``buffersize``: one more chunk's future, None once the
    iterables are spent or the executor is gone (``owner``: its Hand, or None then, as
    CPython's map holds its executor by a weak reference). ``used`` learns each future."""

    # A fork is told by lifespan's generation, as everywhere in the executor: no getpid()
    # per chunk read ahead. The pid is only for the message.
    pid, generation = os.getpid(), lifespan.state.generation

    def more() -> Future[Any] | None:
        if lifespan.state.generation != generation:
            # The calls read ahead are the parent's, their replies the parent's to read:
            # waiting for them here would never end (and a pool's futures would not either).
            raise RuntimeError(
                f"this map(..., buffersize=...) was called in process {pid}, which this one"
                " was forked from: its results are that process's to read; call map in"
                " the child for calls of its own"
            )
        hand = owner()
        if hand is None:
            return None
        got: list[Future[Any]] = []
        try:
            calls.read(hand, got, 1)
        finally:
            used(got)
        if not got:
            return None
        if bar is not None:
            bar.track(got[0], calls.sizes[-1])
        return got[0]

    return more


def once(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn``, run by the first call only (a map's end, or its iterator's collection), in
    the process that made it: a forked child's copy of a map must not let go of the
    parent's file, which the parent's own copy still holds."""
    left, generation = [fn], lifespan.state.generation

    def run() -> None:
        if left and lifespan.state.generation == generation:
            left.pop()()

    return run


def weak_hand(make: Callable[[], Hand]) -> Callable[[], Hand | None]:
    """``make`` (a bound method) held weakly: None once its object is gone."""
    method = weakref.WeakMethod(make)

    def owner() -> Hand | None:
        bound = method()
        return None if bound is None else bound()

    return owner
