"""CPython's test_wait.py (WaitTests) and test_as_completed.py (AsCompletedTests), with
farm.Executor under test.

Adapted as test_executor_cpython.py says: our code, CPython's checks, a real `farm up`;
each test names the CPython test it adapts.
"""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from concurrent import futures
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

import pytest

import farm
from tests.helpers import cpythonfarm
from tests.helpers.calls import add, box, nap, wait_gate, wait_gate_and_raise
from tests.helpers.cpythonfarm import Farm
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared = cpythonfarm.shared
executor = cpythonfarm.executor

pytestmark = pytest.mark.timeout(90)


def made(state: str, result: Any = None, exception: BaseException | None = None) -> Future[Any]:
    """A future in a given state without an executor (CPython's util.create_future)."""
    future: Future[Any] = Future()
    future._state = state  # type: ignore[attr-defined]
    future._result = result  # type: ignore[attr-defined]
    future._exception = exception  # type: ignore[attr-defined]
    return future


PENDING_FUTURE = made(PENDING)


RUNNING_FUTURE = made(RUNNING)


CANCELLED_FUTURE = made("CANCELLED")


CANCELLED_AND_NOTIFIED_FUTURE = made(CANCELLED_AND_NOTIFIED)


EXCEPTION_FUTURE = made(FINISHED, exception=OSError())


SUCCESSFUL_FUTURE = made(FINISHED, result=42)


# -- test_wait.py: WaitTests --


def test_wait_20369(executor: farm.Executor) -> None:
    future = executor.submit(add, 1, 2)
    done, not_done = futures.wait([future, future], return_when=futures.ALL_COMPLETED)
    assert done == {future} and not_done == set()


def test_wait_first_completed(shared: Farm, executor: farm.Executor) -> None:
    with shared.gate() as gate:
        future1 = executor.submit(add, 21, 21)
        future2 = executor.submit(wait_gate, gate.path)
        done, not_done = futures.wait(
            [CANCELLED_FUTURE, future1, future2], return_when=futures.FIRST_COMPLETED
        )
        assert done == {future1}
        assert not_done == {CANCELLED_FUTURE, future2}
    future2.result()


def test_wait_first_completed_some_already_completed(shared: Farm, executor: farm.Executor) -> None:
    with shared.gate() as gate:
        future1 = executor.submit(wait_gate, gate.path)
        finished, pending = futures.wait(
            [CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE, future1],
            return_when=futures.FIRST_COMPLETED,
        )
        assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE}
        assert pending == {future1}
    future1.result()


def test_wait_first_exception(shared: Farm) -> None:
    executor = shared.executor(3)  # all three run at once, as in CPython's pool of 5
    with shared.gate() as gate1, shared.gate() as gate2:
        future1 = executor.submit(add, 2, 21)
        future2 = executor.submit(wait_gate_and_raise, gate1.path)
        future3 = executor.submit(wait_gate, gate2.path)

        def open_after_future1() -> None:
            future1.result()
            gate1.open()

        thread = threading.Thread(target=open_after_future1)
        thread.start()
        finished, pending = futures.wait(
            [future1, future2, future3], return_when=futures.FIRST_EXCEPTION
        )
        assert finished == {future1, future2}
        assert pending == {future3}
        thread.join()
    future3.result()
    executor.shutdown()


def test_wait_first_exception_some_already_complete(shared: Farm, executor: farm.Executor) -> None:
    with shared.gate() as gate:
        future1 = executor.submit(divmod, 21, 0)
        future2 = executor.submit(wait_gate, gate.path)
        finished, pending = futures.wait(
            [SUCCESSFUL_FUTURE, CANCELLED_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1, future2],
            return_when=futures.FIRST_EXCEPTION,
        )
        assert finished == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, future1}
        assert pending == {CANCELLED_FUTURE, future2}
    future2.result()


def test_wait_first_exception_one_already_failed(shared: Farm, executor: farm.Executor) -> None:
    with shared.gate() as gate:
        future1 = executor.submit(wait_gate, gate.path)
        finished, pending = futures.wait(
            [EXCEPTION_FUTURE, future1], return_when=futures.FIRST_EXCEPTION
        )
        assert finished == {EXCEPTION_FUTURE}
        assert pending == {future1}
    future1.result()


def test_wait_all_completed(executor: farm.Executor) -> None:
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(add, 2, 21)
    everything = [
        SUCCESSFUL_FUTURE,
        CANCELLED_AND_NOTIFIED_FUTURE,
        EXCEPTION_FUTURE,
        future1,
        future2,
    ]
    finished, pending = futures.wait(everything, return_when=futures.ALL_COMPLETED)
    assert finished == set(everything) and pending == set()


def test_wait_timeout(shared: Farm, executor: farm.Executor) -> None:
    with shared.gate() as gate:
        future = executor.submit(wait_gate, gate.path)
        finished, pending = futures.wait(
            [CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, future],
            timeout=0.05,
            return_when=futures.ALL_COMPLETED,
        )
        assert finished == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
        assert pending == {future}
    future.result()


# -- test_as_completed.py: AsCompletedTests --


def test_as_completed_no_timeout(executor: farm.Executor) -> None:
    future1 = executor.submit(add, 2, 21)
    future2 = executor.submit(add, 7, 6)
    everything = {
        CANCELLED_AND_NOTIFIED_FUTURE,
        EXCEPTION_FUTURE,
        SUCCESSFUL_FUTURE,
        future1,
        future2,
    }
    assert set(futures.as_completed(everything)) == everything


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_as_completed_future_times_out(
    shared: Farm, executor: farm.Executor, timeout: float
) -> None:
    already = {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}
    completed = set()
    with shared.gate() as gate:
        future = executor.submit(wait_gate, gate.path)
        try:
            for f in futures.as_completed(already | {future}, timeout):
                completed.add(f)
        except futures.TimeoutError:
            pass
    assert completed == already
    future.result()


def test_as_completed_duplicate_futures(executor: farm.Executor) -> None:
    future1 = executor.submit(nap, 0.2)
    assert len(list(futures.as_completed(itertools.repeat(future1, 3)))) == 1


def test_as_completed_free_reference_yielded_future(executor: farm.Executor) -> None:
    fs = [executor.submit(box, i) for i in range(8)]
    for future in futures.as_completed(fs):
        fs.remove(future)
        ref = weakref.ref(future)
        del future
        gc.collect()
        # The pump thread that settled the future holds it until it is done with that
        # reply, a moment after it woke as_completed: freed then, not before.
        wait_for("the yielded future to be freed", lambda ref=ref: ref() is None, timeout=5)


def test_as_completed_correct_timeout_exception_msg() -> None:
    fs = [CANCELLED_AND_NOTIFIED_FUTURE, PENDING_FUTURE, RUNNING_FUTURE, SUCCESSFUL_FUTURE]
    with pytest.raises(futures.TimeoutError) as info:
        list(futures.as_completed(fs, timeout=0))
    assert str(info.value) == "2 (of 4) futures unfinished"
