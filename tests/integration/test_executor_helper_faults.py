"""What ends a helper thread's turn at the executor pump's work (``result()`` reading its
reply): a failure of the executor's own, outside the main thread where no signal handler
runs, breaks the executor as when the pump thread fails itself (docs/executor.md, Broken
executor); a signal handler's exception landing as the turn sets up leaves no thread
marked as reading, so later calls are sent."""

from __future__ import annotations

import concurrent.futures as cf
import select
import signal
import threading
from types import FrameType
from typing import Any

import pytest

import farm.executor.pump as pumpmod
import farm.executor.waithere as waithere
from farm.executor.flight import BrokenFarmExecutor
from tests.helpers import executorfarm
from tests.helpers.calls import add, nap
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.waiting import wait_for

shared_farm = executorfarm.shared_farm


@pytest.mark.timeout(60)
def test_a_bug_met_by_a_helper_thread_breaks_the_executor(
    shared_farm: ExecutorFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Met in a thread's result() (no signal handler runs there), it went to that caller,
    # the pump dropped every connection and the executor went on, nothing logged; met by
    # the pump thread, the same bug breaks the executor.
    real, armed = pumpmod.complete, threading.Event()

    def buggy(*args: Any) -> Any:
        if armed.is_set():
            armed.clear()
            raise RuntimeError("a bug in the pump")
        return real(*args)

    monkeypatch.setattr(pumpmod, "complete", buggy)
    with shared_farm.executor() as ex:
        assert ex.submit(add, 1, 1).result(timeout=30) == 2
        pump = ex._pump
        wait_for("the pump to sleep", lambda: pump._sleeping)
        armed.set()
        future = ex.submit(add, 2, 2)
        raised: list[BaseException] = []

        def reader() -> None:
            try:
                future.result(timeout=30)
            except BaseException as exc:
                raised.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        thread.join(40)
        assert not armed.is_set(), "the bug was not met"
        assert len(raised) == 1 and isinstance(raised[0], BrokenFarmExecutor), raised
        assert "RuntimeError: a bug in the pump" in str(raised[0])
        with pytest.raises(BrokenFarmExecutor):
            ex.submit(add, 3, 3)


class RequestTimeout(TimeoutError):
    """What a web app's alarm handler raises."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise RequestTimeout("request time limit")


@pytest.mark.timeout(60)
def test_a_cut_as_a_reading_turn_sets_up_leaves_later_calls_sent(
    shared_farm: ExecutorFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut as its poll() was made, before the turn's try: the thread stayed marked as the
    # one reading (_reader, _helper), so its later submits neither sent nor woke the pump,
    # and their calls waited until some other reply woke it (for ever, for a lone caller).
    caller, armed, real_poll = threading.get_ident(), threading.Event(), select.poll

    class Select:
        POLLIN = select.POLLIN

        @staticmethod
        def poll() -> Any:
            made = real_poll()
            if threading.get_ident() == caller and armed.is_set():
                armed.clear()
                signal.raise_signal(signal.SIGUSR1)  # its handler runs as poll() returns
            return made

    previous = signal.signal(signal.SIGUSR1, _alarm)
    try:
        with shared_farm.executor() as ex:
            assert ex.submit(add, 1, 1).result(timeout=30) == 2
            pump = ex._pump
            wait_for("the pump to sleep", lambda: pump._sleeping)
            future = ex.submit(nap, 0.2)
            monkeypatch.setattr(waithere, "select", Select)
            armed.set()
            with pytest.raises(RequestTimeout):
                future.result(timeout=30)
            monkeypatch.setattr(waithere, "select", select)
            cf.wait([future], timeout=30)
            assert pump._reader == 0 and pump._helper == 0
            wait_for("the pump to sleep", lambda: pump._sleeping)
            later = ex.submit(add, 3, 3)
            done = threading.Event()
            later.add_done_callback(lambda _: done.set())
            assert done.wait(10), "the later call was not sent"
            assert later.result() == 6
    finally:
        signal.signal(signal.SIGUSR1, previous)
