"""The generic parts of CPython's own concurrent.futures tests, with farm.Executor under test.

Adapted (our code, same checks) from Lib/test/test_concurrent_futures/: executor.py
(ExecutorTest), test_process_pool.py (the parts that are not about the pool's
processes), test_wait.py, test_as_completed.py, test_shutdown.py and test_init.py,
against a real `farm up` with two ``farm.python`` workers and a one-worker pool
``farm.solo`` (where CPython's test needs a single worker). Each test names the
CPython test it adapts. Where CPython blocks a call on a Manager's Event, the call
here waits at a gate (tests/helpers/gate.py). Tests of CPython's suite that do not
apply to the farm are listed in docs/executor.md ("CPython's tests").

This file holds executor.py's and test_process_pool.py's; test_executor_cpython_wait.py
has test_wait.py's and test_as_completed.py's, test_executor_cpython_shutdown.py
test_shutdown.py's and test_init.py's.
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from concurrent import futures

import pytest

import farm
from tests.helpers import cpythonfarm
from tests.helpers.calls import Box, add, box, nap, raise_runtime_error_123, wait_gate
from tests.helpers.cpythonfarm import WORKERS, Farm, capture
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared = cpythonfarm.shared
executor = cpythonfarm.executor

pytestmark = pytest.mark.timeout(90)

# -- executor.py: ExecutorTest --


def test_submit(executor: farm.Executor) -> None:
    assert executor.submit(pow, 2, 8).result() == 256


def test_submit_keyword(executor: farm.Executor) -> None:
    assert executor.submit(add, 2, b=8).result() == 10
    assert executor.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_map(executor: farm.Executor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_exception(executor: farm.Executor) -> None:
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(shared: Farm, executor: farm.Executor) -> None:
    results = []
    with shared.gate() as gate, pytest.raises(futures.TimeoutError):
        for value in executor.map(wait_gate, ["", "", gate.path], timeout=3):
            results.append(value)
    assert results == [None, None]


def test_shutdown_race_issue12456(executor: farm.Executor) -> None:
    executor.map(str, [2] * (WORKERS + 1))
    executor.shutdown()


def test_no_stale_references(executor: farm.Executor) -> None:
    obj = Box(1)
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    executor.submit(add, obj.value)  # the future is discarded
    executor.submit(str, obj).result()
    del obj
    gc.collect()
    assert collected.wait(10), "the executor holds on to an argument"
    assert ref() is None


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_negative(shared: Farm, number: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        shared.executor(number)


def test_max_workers_none_is_the_pools_size_the_server_reports(shared: Farm) -> None:
    # ProcessPoolExecutor() means the cores; farm.Executor() means the farm's workers.
    with shared.executor(None) as ex:
        assert ex._max_workers == WORKERS
        assert ex.submit(add, 1, 1).result() == 2
    with shared.executor(None, function="farm.solo") as solo:
        assert solo._max_workers == 1


def test_free_reference(executor: farm.Executor) -> None:
    for obj in executor.map(box, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        # The pump thread that set the result holds it until it is done with that reply,
        # a moment after it woke this thread: freed then, not before.
        wait_for("the yielded result to be freed", lambda ref=ref: ref() is None, timeout=5)


# -- test_process_pool.py: ProcessPoolExecutorTest, the parts about calls --


def test_map_chunksize(executor: farm.Executor) -> None:
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (6, 50, 40):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == expected
    with pytest.raises(ValueError):
        list(executor.map(pow, range(40), range(40), chunksize=-1))


def test_traceback(executor: farm.Executor) -> None:
    future = executor.submit(raise_runtime_error_123)
    with pytest.raises(RuntimeError) as info:
        future.result()
    assert info.value.args == (123,)
    cause = info.value.__cause__
    assert type(cause) is farm.executor.RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in cause.tb


def test_max_tasks_per_child(shared: Farm) -> None:
    # One worker (farm.solo): the calls run in it until it has run three tasks, then in the
    # supervisor's new worker. Its tasks are counted, not the calls: a call pushed to a
    # worker that the machine left unscheduled past the server's --wake-deadline is taken
    # back and pushed to it again (docs/held-grab.md), and read just as the deadline passed
    # (before its JOB_REVOKE: docs/held-grab.md, what remains) it runs twice, two tasks. On a
    # loaded machine (the suite on 3 xdist workers, 2 cores) the third call once ran in
    # the new worker: [A, A, B, ...], not [A, A, A, B].
    (solo,) = shared.up.workers("farm.solo")
    original, tasks_before = solo["pid"], solo["jobs"]
    executor = shared.executor(1, function="farm.solo", max_tasks_per_child=3)
    pids = [executor.submit(os.getpid).result() for _ in range(4)]
    executor.shutdown()
    replaced = next((i for i, pid in enumerate(pids) if pid != original), None)
    assert pids[0] == original and replaced is not None, pids  # the supervisor's new worker
    assert original not in pids[replaced:], pids
    line = wait_for(
        "the first worker's recycle in the log",
        lambda: next(
            (x for x in shared.up.read_log().splitlines() if f"(pid {original}, " in x), None
        ),
    )
    assert f", {tasks_before + 3} jobs) was recycled (max_tasks_per_child 3 of executor" in line


def test_max_tasks_early_shutdown(shared: Farm) -> None:
    executor = shared.executor(3, max_tasks_per_child=1)
    fs = [executor.submit(add, i * i) for i in range(6)]
    executor.shutdown()
    assert [f.result() for f in fs] == [i * i for i in range(6)]


@pytest.mark.parametrize(("max_workers", "max_tasks", "calls"), [(1, 2, 6), (2, 2, 8)])
def test_max_tasks_per_child_pending_tasks_gh115634(
    shared: Farm, max_workers: int, max_tasks: int, calls: int
) -> None:
    executor = shared.executor(max_workers, max_tasks_per_child=max_tasks)
    try:
        fs = [executor.submit(add, i, i) for i in range(calls)]
        assert [f.result(timeout=30) for f in fs] == [2 * i for i in range(calls)]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_shutdown_no_wait_max_tasks_gh119592(shared: Farm) -> None:
    # A worker at its limit exits while more calls wait: they still run (shutdown(wait=False)).
    executor = shared.executor(1, function="farm.solo", max_tasks_per_child=1)
    with shared.gate() as gate:
        fs = [executor.submit(wait_gate, gate.path) for _ in range(3)]
        executor.shutdown(wait=False)
    assert [f.result(timeout=30) for f in fs] == [None, None, None]


def test_shutdown_gh_132969(shared: Farm) -> None:
    executor = shared.executor(2, max_tasks_per_child=1)
    f1, f2, f3 = executor.submit(nap, 0.01), executor.submit(divmod, 1, 0), executor.submit(add, 3)
    total = 0.0
    try:
        total += f1.result()
        total += f2.result()[0]
        total += f3.result()
    except ZeroDivisionError:
        pass
    executor.shutdown(wait=False)
    executor._thread.join(30)  # type: ignore[union-attr]  # the pump ends: nothing hangs
    assert total == 0.01
