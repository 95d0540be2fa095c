"""farm.Executor under random mixes of what callers do, against a real `farm up`.

Seeded sequences of ``submit`` (calls that return, raise, or carry arguments or results
past the spill threshold, farm.executor.spill), ``map`` (chunk sizes from 1 to 64, with
and without ``buffersize``, iterables that raise part-way), ``cancel``, ``wait`` and
``as_completed`` on random subsets, and now and then ``shutdown(cancel_futures=True)``,
all on one executor, so that the paths of batching, chunks, spills, the pump and the
waiting thread meet in orders no single-scenario test walks. Each call's outcome is
known in advance; every future must end with it, or be cancelled (then ``result()``
raises CancelledError) where ``cancel()`` said so.
``FARM_EXECUTOR_SESSIONS=N`` runs N seeds (8 by default).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, as_completed, wait
from pathlib import Path
from typing import Any

import pytest

import farm
from farm.executor.spill import SPILL_THRESHOLD
from tests.helpers.calls import add, fails
from tests.helpers.farmproc import FarmUp, executor_farm

pytestmark = pytest.mark.timeout(180)

BIG = SPILL_THRESHOLD + 1000  # an argument or result this size goes through the spill


def blob(size: int) -> bytes:
    """A result of ``size`` bytes."""
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FarmUp, Path]]:
    with executor_farm(tmp_path_factory.mktemp("farm")) as (farm_up, key):
        yield farm_up, key


class Expected:
    """What a future must end with: a value, or an exception of a type."""

    def __init__(self, value: Any = None, raises: type[BaseException] | None = None) -> None:
        self.value, self.raises = value, raises

    def check(self, future: Future[Any], what: str) -> None:
        if future.cancelled():
            with pytest.raises(CancelledError):
                future.result(timeout=0)
            return
        if self.raises is not None:
            assert isinstance(future.exception(timeout=60), self.raises), what
        else:
            assert future.result(timeout=60) == self.value, what


def _one_call(rng: random.Random) -> tuple[Callable[..., Any], tuple[Any, ...], Expected]:
    kind = rng.choice(["add", "add", "fails", "big result", "big argument"])
    if kind == "add":
        a, b = rng.randrange(1000), rng.randrange(1000)
        return add, (a, b), Expected(a + b)
    if kind == "fails":
        x = rng.randrange(6)
        return fails, (x,), Expected(raises=ValueError) if x == 3 else Expected(x * 10)
    if kind == "big result":
        return blob, (BIG,), Expected(blob(BIG))
    data = rng.randbytes(BIG)
    return len, (data,), Expected(len(data))


def _raising(items: list[int], at: int) -> Iterator[int]:
    """``items``, then ValueError after ``at`` of them (a generator that breaks part-way)."""
    for i, item in enumerate(items):
        if i == at:
            raise ValueError("the iterable broke")
        yield item


def session(pool: farm.Executor, seed: int) -> None:
    rng = random.Random(seed)
    futures: list[tuple[Future[Any], Expected, str]] = []
    cancelled: list[Future[Any]] = []
    for step in range(40):
        what = rng.choices(
            ["submit", "map", "map-raises", "cancel", "wait", "as_completed"],
            [40, 14, 4, 8, 4, 4],
        )[0]
        label = f"seed {seed} step {step} {what}"
        if what == "submit":
            fn, args, expected = _one_call(rng)
            futures.append((pool.submit(fn, *args), expected, f"{label} {fn.__name__}"))
        elif what in ("map", "map-raises"):
            n = rng.randrange(0, 300)
            xs = [rng.randrange(6) for _ in range(n)]
            chunksize = rng.choice([1, 1, 2, 7, 64])
            extra: dict[str, Any] = {}
            if rng.random() < 0.3:
                extra["buffersize"] = rng.randrange(1, 5)
            if what == "map":
                got = list(pool.map(add, xs, xs, chunksize=chunksize, **extra))
                assert got == [x + x for x in xs], f"{label} chunksize {chunksize} {extra}"
            else:
                at = rng.randrange(0, n + 1)
                got = []
                try:
                    for value in pool.map(fails, _raising(xs, at), chunksize=chunksize, **extra):
                        got.append(value)
                except ValueError as exc:
                    # The iterable broke (at the map() call, or later with buffersize), or
                    # a call raised: one of them must have.
                    assert at < n or 3 in xs[:at], f"{label}: {exc}"
                else:
                    assert at == n and 3 not in xs, label
                # What came before the first failure is right, in order.
                assert got == [x * 10 for x in xs[: len(got)]], label
        elif what == "cancel" and futures:
            future = rng.choice(futures)[0]
            if future.cancel():
                cancelled.append(future)
                assert future.cancelled(), label
        elif what == "wait" and futures:
            some = [f for f, _, _ in rng.sample(futures, min(len(futures), 5))]
            done, _ = wait(some, timeout=60)
            assert all(f.done() for f in done), label
        elif what == "as_completed" and futures:
            some = {f for f, _, _ in rng.sample(futures, min(len(futures), 5))}
            seen = [f for f in as_completed(some, timeout=60) if not f.cancelled()]
            assert len(seen) == len(set(seen)) and set(seen) <= some, label
    shut = rng.random() < 0.25
    if shut:
        # Calls not sent yet are cancelled, the rest run. (A future cancelled so is not
        # "done" for wait(), as with ProcessPoolExecutor: it is left out below.)
        pool.shutdown(wait=True, cancel_futures=True)
    ending = [f for f, _, _ in futures if not f.cancelled()]
    done, not_done = wait(ending, timeout=120)
    assert not not_done, f"seed {seed}: {len(not_done)} futures never ended"
    for future, expected, label in futures:
        # Only cancel() (where it said yes) or shutdown(cancel_futures=True) cancels a call.
        if future.cancelled():
            assert shut or future in cancelled, f"{label}: cancelled, and nobody cancelled it"
        expected.check(future, label)
    assert all(f.cancelled() for f in cancelled)


@pytest.mark.parametrize("seed", range(int(os.environ.get("FARM_EXECUTOR_SESSIONS", "8"))))
def test_random_mixes_of_calls_end_as_they_must(up: tuple[FarmUp, Path], seed: int) -> None:
    farm_up, key = up
    with farm.Executor(servers=[f"unix:{farm_up.unix}"], key_file=str(key)) as pool:
        session(pool, seed)
