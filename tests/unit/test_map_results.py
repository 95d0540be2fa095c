"""farm.executor.futures.results: what map's iterator yields, holds and cancels."""

from __future__ import annotations

import gc
import weakref
from concurrent.futures import Future
from typing import Any

import pytest

from farm.executor.futures import results as map_results


class Box:
    def __init__(self, value: int) -> None:
        self.value = value


def done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


@pytest.mark.parametrize("chunked", [False, True])
def test_dropping_the_iterator_cancels_the_calls_not_yet_due(chunked: bool) -> None:
    first = done([1, 2] if chunked else 1)
    later: list[Future[Any]] = [Future(), Future()]
    results = map_results([first, *later], None, chunked=chunked)
    assert next(results) == 1
    del results
    gc.collect()
    assert all(f.cancelled() for f in later)


def test_chunks_yield_in_order_and_hold_no_value_they_gave() -> None:
    boxes = [Box(i) for i in range(4)]
    refs = [weakref.ref(b) for b in boxes]
    futures = [done(boxes[:2]), done(boxes[2:])]
    del boxes
    results = map_results(futures, None, chunked=True)
    got = next(results)
    assert got.value == 0
    del got
    assert refs[0]() is None, "the first value of a chunk is freed once the caller drops it"
    assert [b.value for b in results] == [1, 2, 3]


def test_a_failed_chunk_raises_after_the_values_before_it() -> None:
    bad: Future[Any] = Future()
    bad.set_exception(ValueError("chunk 2"))
    results = map_results([done([1, 2]), bad, done([5])], None, chunked=True)
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(ValueError, match="chunk 2"):
        next(results)


@pytest.mark.parametrize("chunked", [False, True])
def test_close_cancels_the_calls_not_yet_due_as_a_generator_does(chunked: bool) -> None:
    later: list[Future[Any]] = [Future(), Future()]
    results = map_results([done([1] if chunked else 1), *later], None, chunked=chunked)
    assert next(results) == 1
    results.close()  # type: ignore[attr-defined]  # map's iterator, as ProcessPoolExecutor's
    assert all(f.cancelled() for f in later)
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.parametrize("chunked", [False, True])
def test_more_adds_a_future_before_each_wait_and_ended_runs_once(chunked: bool) -> None:
    """A map with buffersize: ``more`` tops the futures up before each result is waited for
    (CPython 3.14's order), until it says None; ``ended`` runs once, however the map ends."""
    made = iter(range(2, 5))
    calls: list[str] = []

    def more() -> Future[Any] | None:
        calls.append("more")
        value = next(made, None)
        return None if value is None else done([value] if chunked else value)

    def ended() -> None:
        calls.append("ended")

    first = [done([0] if chunked else 0), done([1] if chunked else 1)]
    results = map_results(first, None, chunked=chunked, more=more, ended=ended)
    assert calls == [], "nothing is read before the first result is asked for"
    assert next(results) == 0
    assert calls == ["more"]
    assert list(results) == [1, 2, 3, 4]
    assert calls == ["more"] * 4 + ["ended"], "once None, more is asked no more"


def test_closing_a_map_with_more_cancels_what_it_added_and_ends_it() -> None:
    added: list[Future[Any]] = []
    ended: list[bool] = []

    def more() -> Future[Any] | None:
        added.append(Future())
        return added[-1]

    results = map_results(
        [done(0)], None, chunked=False, more=more, ended=lambda: ended.append(True)
    )
    assert next(results) == 0
    assert len(added) == 1 and not added[0].done()
    results.close()  # type: ignore[attr-defined]
    assert added[0].cancelled()
    assert ended == [True]
