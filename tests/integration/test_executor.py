"""farm.Executor against real processes: farm's server and executor worker processes.

The same small programs run against ProcessPoolExecutor(2) and farm.Executor
and must observe the same things, shutdown included. Calls in flight (workers lost,
batches) are in test_executor_flight.py, the rest of the concurrent.futures contract in
test_executor_contract.py, signatures in test_executor_signatures.py.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from typing import Any

import pytest

import farm
from farm.executor import RemoteTraceback
from tests.helpers import executorfarm
from tests.helpers.calls import POOL_CONTEXT, add, fails, nap
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared_farm = executorfarm.shared_farm
ex = executorfarm.ex

# -- the same program against both executors --


def program(ex: Executor) -> dict[str, Any]:
    """What a user program observes; must be equal for ProcessPoolExecutor and farm.Executor."""
    seen: dict[str, Any] = {}
    seen["submit"] = ex.submit(add, 2, b=3).result()
    seen["map"] = list(ex.map(add, range(5), range(10, 13)))  # stops at the shortest
    seen["map_chunks"] = list(ex.map(add, range(10), chunksize=3))
    # One iterable travels as a list of arguments: a tuple argument stays one argument.
    seen["map_tuple_args"] = list(ex.map(len, [(1, 2), (3,), (), "ab"], chunksize=3))
    seen["map_chunks_2"] = list(ex.map(add, range(7), range(10, 20), chunksize=3))
    seen["empty_map"] = list(ex.map(add, []))
    future = ex.submit(fails, 3)
    exc = future.exception(timeout=30)
    seen["exception"] = (type(exc).__name__, str(exc))
    cause = exc.__cause__
    seen["cause_has_traceback"] = (
        "Traceback (most recent call last)" in str(cause)
        and "in fails" in str(cause)
        and 'raise ValueError(f"bad input {x}")' in str(cause)
    )
    results = ex.map(fails, range(6))
    got = [next(results), next(results), next(results)]
    try:
        next(results)
    except ValueError as e:
        got.append(f"raised {e}")
    seen["map_raises_in_order"] = got
    chunked = ex.map(fails, range(6), chunksize=2)
    got = [next(chunked), next(chunked)]
    try:
        next(chunked)  # 2 and 3 share a chunk: the chunk fails as a whole
    except ValueError as e:
        got.append(f"raised {e}")
    seen["chunk_raises"] = got
    with pytest.raises(ValueError):
        ex.map(add, [1], chunksize=0)
    done = ex.submit(add, 1)
    done.result()
    seen["states"] = (done.done(), done.cancelled(), done.running(), done.cancel())
    return seen


def test_same_program_same_observations(ex: farm.Executor) -> None:
    with ProcessPoolExecutor(2, mp_context=POOL_CONTEXT) as pool:
        expected = program(pool)
    assert program(ex) == expected
    assert expected["exception"] == ("ValueError", "bad input 3")  # the program checks something
    assert expected["cause_has_traceback"] is True


def test_remote_traceback_is_the_cause(ex: farm.Executor) -> None:
    exc = ex.submit(fails, 3).exception(timeout=30)
    assert isinstance(exc, ValueError)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "in fails" in exc.__cause__.tb


def test_lambdas_closures_and_kwargs(ex: farm.Executor) -> None:
    factor = 7
    assert ex.submit(lambda x: x * factor, 6).result(timeout=30) == 42
    assert ex.submit(sorted, [3, 1, 2], reverse=True).result(timeout=30) == [3, 2, 1]
    assert list(ex.map(lambda a, b: a - b, [10, 20], [1, 2], chunksize=2)) == [9, 18]

    class Point:  # defined here: travels by value, comes back as the same class
        def __init__(self, x: int) -> None:
            self.x = x

    back = ex.submit(lambda p: Point(p.x + 1), Point(1)).result(timeout=30)
    assert type(back) is Point and back.x == 2


def test_sequential_calls_go_out_from_the_callers_thread(ex: farm.Executor) -> None:
    # An idle pump is not woken to send a call: the submitting thread sends it (its reply
    # wakes the pump). One wake-up per call would be a thread hop per call.
    assert ex.submit(abs, -1).result(timeout=30) == 1  # the pump is started and idle
    pump = ex._pump
    wakes = []
    real_wake = pump._wake
    pump._wake = lambda: (wakes.append(1), real_wake())  # type: ignore[method-assign]
    results = []
    try:
        for i in range(50):
            # Idle: back in its select. On a loaded host the caller, woken by its result,
            # could submit before the pump got there (10 of 50 under CI's load): a busy
            # pump reads the queue itself, which is not what this test is about.
            wait_for("the pump to sleep", lambda: pump._sleeping)
            results.append(ex.submit(abs, -i).result(timeout=30))
    finally:
        pump._wake = real_wake  # type: ignore[method-assign]
    assert results == list(range(50))
    # The pump's look at its deque after it says it sleeps may still hold the lock: rare.
    assert len(wakes) <= 2, f"{len(wakes)} of 50 sequential calls needed the pump woken"


def test_threads_waiting_on_futures_of_two_executors_do_not_deadlock(
    shared_farm: ExecutorFarm,
) -> None:
    # concurrent.futures.wait() and as_completed() lock the futures they are given in the
    # order of their id(). Were the futures of each executor to share a lock of their own,
    # two threads waiting on futures of both executors, in opposite id orders, could each
    # take one lock and wait for the other's for good, as no two ProcessPoolExecutor futures do.
    with shared_farm.executor() as one, shared_farm.executor() as two:
        # Made in turns, so that their ids interleave: made one executor's after the
        # other's, they could all lie above the others (fresh memory) and no pair be found.
        made = [(one.submit(add, i), two.submit(add, i)) for i in range(20)]
        ones, twos = [a for a, _ in made], [b for _, b in made]
        wait(ones + twos, timeout=30)
        forward = [(a, b) for a in ones for b in twos if id(a) < id(b)][:10]
        backward = [(b, a) for a in ones for b in twos if id(b) < id(a)][:10]
        assert forward and backward, "the futures' ids always fall one way: pick others"

        def waits(pairs: list[tuple[Future[int], Future[int]]], done: threading.Event) -> None:
            for _ in range(500):
                for pair in pairs:
                    wait(pair)
            done.set()

        dones = [threading.Event(), threading.Event()]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads take turns between two lock takes, as they may
        try:
            for pairs, done in zip((forward, backward), dones, strict=True):
                threading.Thread(target=waits, args=(pairs, done), daemon=True).start()
            deadline = time.monotonic() + 20
            ended = [done.wait(max(0.0, deadline - time.monotonic())) for done in dones]
        finally:
            sys.setswitchinterval(interval)
        assert all(ended), "two threads' wait() deadlocked"


def test_unpicklable_argument_fails_its_future(ex: farm.Executor) -> None:
    future = ex.submit(add, threading.Lock())
    with pytest.raises(TypeError, match="pickle"):
        future.result(timeout=30)
    assert ex.submit(add, 1, 1).result(timeout=30) == 2


def test_map_timeout(ex: farm.Executor) -> None:
    # The first call's round trip must fit in the timeout on a loaded machine; the second
    # cannot (5 s of sleep).
    results = ex.map(nap, [0.0, 5.0], timeout=3)
    assert next(results) == 0.0
    with pytest.raises(TimeoutError):
        next(results)


def shutdown_program(ex: Executor) -> dict[str, Any]:
    """shutdown(cancel_futures=True): what was sent finished, the rest (a tail) is cancelled."""
    futures = [ex.submit(nap, 0.05) for _ in range(40)]
    ex.shutdown(wait=True, cancel_futures=True)
    states = ["cancelled" if f.cancelled() else "done" for f in futures]
    first_cancelled = states.index("cancelled") if "cancelled" in states else len(states)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(nap, 0)
    return {
        "all_settled": all(f.done() for f in futures),
        "some_cancelled": "cancelled" in states,
        "cancelled_are_the_tail": all(s == "cancelled" for s in states[first_cancelled:]),
        "ran_ok": all(f.result() == 0.05 for f in futures if not f.cancelled()),
    }


def test_shutdown_cancel_futures_like_process_pool(shared_farm: ExecutorFarm) -> None:
    with ProcessPoolExecutor(2, mp_context=POOL_CONTEXT) as pool:
        pool.submit(add, 0).result()  # start its processes, as the farm's already run
        expected = shutdown_program(pool)
    assert expected == dict.fromkeys(expected, True)
    assert shutdown_program(shared_farm.executor(max_workers=4)) == expected


def test_shutdown_wait_finishes_everything(shared_farm: ExecutorFarm) -> None:
    ex = shared_farm.executor(max_workers=2)
    futures = [ex.submit(nap, 0.01) for _ in range(10)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [0.01] * 10
