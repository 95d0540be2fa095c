"""A call's ``result()`` reads its reply in the waiting thread when the pump thread sleeps
(farm.executor.pump.Pump.wait_here), against a real `farm up`: the outcome is the
same, timeouts hold, and other threads' calls are not held up behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path

import pytest

import farm
from tests.helpers.calls import add, wait_gate
from tests.helpers.farmproc import FarmUp
from tests.helpers.gate import Gate

POOL = """
[functions."farm.python"]
target = "farm.executor.call:run_call"
workers = 2
"""

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[farm.Executor, Path]]:
    tmp = tmp_path_factory.mktemp("waiting")
    key = tmp / "state" / "executor.key"
    up = FarmUp(tmp, POOL, extra_env={"FARM_KEY_FILE": str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 2})
        with farm.Executor(servers=[f"unix:{up.unix}"], key_file=str(key)) as ex:
            assert [ex.submit(add, i, 1).result() for i in range(5)] == [1, 2, 3, 4, 5]
            yield ex, tmp
    finally:
        up.stop()


def test_result_is_read_by_the_thread_that_waits_for_it(
    executor: tuple[farm.Executor, Path],
) -> None:
    ex, _ = executor
    settled_in = []
    for i in range(20):
        future = ex.submit(add, i, i)
        future.add_done_callback(lambda _: settled_in.append(threading.current_thread().name))
        assert future.result(timeout=10) == 2 * i
    # The callbacks run in the thread that set the result: this one, where it read the
    # reply itself, instead of the pump thread ("farm-executor").
    assert settled_in.count(threading.current_thread().name) >= 10, settled_in


def test_a_timeout_is_honoured_once_not_twice(executor: tuple[farm.Executor, Path]) -> None:
    ex, tmp = executor
    with Gate(tmp / "gate-timeout") as gate:
        future = ex.submit(wait_gate, gate.path)
        began = time.monotonic()
        with pytest.raises(FuturesTimeout):
            future.result(timeout=1.0)
        waited = time.monotonic() - began
        assert 1.0 <= waited < 1.8, f"result(timeout=1.0) waited {waited:.2f} s"
        with pytest.raises(FuturesTimeout):
            future.exception(timeout=0.1)
        gate.open()
        assert future.result(timeout=10) is None


def test_another_threads_call_is_not_held_up_by_a_thread_waiting_here(
    executor: tuple[farm.Executor, Path],
) -> None:
    ex, tmp = executor
    with Gate(tmp / "gate-other") as gate:
        long = ex.submit(wait_gate, gate.path)
        waiter = threading.Thread(target=long.result, kwargs={"timeout": 30})
        waiter.start()  # it waits for the long call, reading replies itself
        try:
            assert ex.submit(add, 40, 2).result(timeout=10) == 42
            assert not long.done(), "the short call finished while the long one still ran"
        finally:
            gate.open()
            waiter.join(30)
        assert long.result(timeout=10) is None
