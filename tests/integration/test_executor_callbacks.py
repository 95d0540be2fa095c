"""Done-callbacks run in the executor's pump thread, as ProcessPoolExecutor runs them in its
manager thread, even when the thread waiting in ``result()`` reads the reply itself
(farm.executor.waithere): that thread only settles the future and wakes its waiters. Run
there, a callback held ``result()`` for as long as it ran (its timeout not honoured),
another future's callback held it too, and one that took a lock the caller held while it
waited deadlocked the caller for ever. One added to a done call runs at once in the adding
thread, as Future's. Against a real `farm up`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, as_completed, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers.calls import add, nap, wait_gate
from tests.helpers.farmproc import executor_farm
from tests.helpers.gate import Gate
from tests.helpers.settledby import SettledBy
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

PUMP = "farm-executor"  # the pump thread's name (Executor._start_pump)
#: How long a test's blocked callback holds on before it gives up, so that a regression
#: fails the test's assertions rather than its timeout.
HOLD = 10.0


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[farm.Executor, Path]]:
    tmp = tmp_path_factory.mktemp("callbacks")
    with (
        executor_farm(tmp) as (up, key),
        farm.Executor(servers=[f"unix:{up.unix}"], key_file=str(key)) as ex,
    ):
        assert [ex.submit(add, i, 1).result() for i in range(5)] == [1, 2, 3, 4, 5]
        yield ex, tmp


def held(release: threading.Event, ran: list[str]) -> Callable[[Future[Any]], None]:
    """A done-callback that blocks until ``release`` is set (at most HOLD seconds), then
    notes the thread it ran in."""

    def callback(_: Future[Any]) -> None:
        release.wait(HOLD)
        ran.append(threading.current_thread().name)

    return callback


def test_result_returns_before_a_slow_callback_ends(executor: tuple[farm.Executor, Path]) -> None:
    # ProcessPoolExecutor: 0.2 s. The callback ran in the waiting thread: result() came
    # back only once it ended (2.2 s for a callback of 2 s).
    ex, _ = executor
    release, ran = threading.Event(), []
    try:
        future = ex.submit(nap, 0.2)
        future.add_done_callback(held(release, ran))
        began = time.monotonic()
        assert future.result(timeout=HOLD / 2) == 0.2
        waited = time.monotonic() - began
        assert waited < HOLD / 2, f"result() waited {waited:.1f} s for the callback"
        assert not ran, "the callback ended before result() returned"
    finally:
        release.set()
    wait_for("the callback", lambda: ran)
    assert ran == [PUMP]


def test_a_callback_taking_a_lock_the_waiter_holds_does_not_deadlock(
    executor: tuple[farm.Executor, Path],
) -> None:
    # The reviewer's case: a progress counter guarded by the application's lock, which the
    # caller holds while it waits. Run in the waiting thread, the callback deadlocked it:
    # the timeout never honoured, Ctrl-C held back until the callback returned.
    ex, _ = executor
    lock = threading.Lock()
    ran: list[str] = []

    def count(_: Future[Any]) -> None:
        if lock.acquire(timeout=HOLD):  # plain `with lock:` hung for ever before the fix
            lock.release()
            ran.append(threading.current_thread().name)
        else:
            ran.append("deadlocked")

    future = ex.submit(nap, 0.2)
    future.add_done_callback(count)
    began = time.monotonic()
    with lock:
        assert future.result(timeout=HOLD / 2) == 0.2
        waited = time.monotonic() - began
    assert waited < HOLD / 2, f"result(timeout={HOLD / 2}) returned after {waited:.1f} s"
    wait_for("the callback", lambda: ran)
    assert ran == [PUMP]


def test_another_futures_callback_does_not_hold_up_a_timeout(
    executor: tuple[farm.Executor, Path],
) -> None:
    # ProcessPoolExecutor: TimeoutError at 0.5 s. The waiting thread read the other call's
    # reply and ran its 3 s callback: result(timeout=0.5) raised only after 3.1 s.
    ex, tmp = executor
    release, ran = threading.Event(), []
    with Gate(tmp / "gate-other-callback") as gate:
        try:
            long = ex.submit(wait_gate, gate.path)
            short = ex.submit(nap, 0.2)
            short.add_done_callback(held(release, ran))
            settled = SettledBy(short)
            began = time.monotonic()
            with pytest.raises(FuturesTimeout):
                long.result(timeout=1.0)
            waited = time.monotonic() - began
            assert waited < HOLD / 2, f"result(timeout=1.0) raised after {waited:.1f} s"
            assert short.result(timeout=HOLD / 2) == 0.2
            assert not ran, "the other call's callback ended already"
        finally:
            release.set()
            gate.open()
        assert long.result(timeout=HOLD) is None
    wait_for("the callback", lambda: ran)
    assert ran == [PUMP]
    # Whoever read short's reply (this thread, waiting for long, or the pump), its callback
    # ran in the pump thread.
    assert settled.thread in (threading.current_thread().name, PUMP)


def ordered_callbacks(ex: farm.Executor, i: int) -> str:
    """A call with two callbacks, the first held until result() returned and a third was
    added: those two run in that order, in the pump thread; the third, added to a done call,
    at once in the adding thread, as Future's. The thread that read its reply."""
    release, ran = threading.Event(), []
    future = ex.submit(add, i, i)
    settled = SettledBy(future)
    future.add_done_callback(held(release, ran))
    future.add_done_callback(lambda _: ran.append("second"))
    here = threading.current_thread().name
    try:
        assert future.result(timeout=HOLD / 2) == 2 * i
        assert ran == [], "a callback ran before result() returned"
        future.add_done_callback(lambda _: ran.append(f"third in {thread_name()}"))
        # It was queued behind the two, for the pump thread: run later, and elsewhere.
        assert ran == [f"third in {here}"], "a callback added to a done call did not run at once"
    finally:
        release.set()
    wait_for("the callbacks", lambda: len(ran) == 3)
    assert ran == [f"third in {here}", PUMP, "second"]
    return settled.thread


def thread_name() -> str:
    return threading.current_thread().name


def test_the_waiting_thread_reads_its_reply_and_the_pump_runs_the_callbacks(
    executor: tuple[farm.Executor, Path],
) -> None:
    # The fast path stays: the reply is read (the future settled) in the thread that waits
    # for it; only the callbacks go to the pump thread, in the order they were added; one
    # added once result() returned (while the others still wait) runs at once, here.
    ex, _ = executor
    read_here = 0
    for i in range(20):
        read_here += ordered_callbacks(ex, i) == threading.current_thread().name
    assert read_here >= 10, f"the waiting thread read {read_here} of 20 replies"


def test_a_callback_added_by_a_callback_runs_at_once_in_its_thread(
    executor: tuple[farm.Executor, Path],
) -> None:
    # As Future's: the call is done, so the added callback runs inside add_done_callback.
    # It was queued behind the one adding it, and ran only once that one had ended.
    ex, _ = executor
    ran: list[str] = []

    def adding(future: Future[Any]) -> None:
        future.add_done_callback(lambda _: ran.append(f"added in {thread_name()}"))
        ran.append("adding ends")

    future = ex.submit(add, 1, 2)
    future.add_done_callback(adding)
    assert future.result(timeout=HOLD) == 3
    wait_for("the callbacks", lambda: len(ran) == 2)
    assert ran == [f"added in {PUMP}", "adding ends"]


def test_wait_as_completed_and_wrap_future_see_a_reply_read_by_a_waiting_thread(
    executor: tuple[farm.Executor, Path],
) -> None:
    # wait() and as_completed() are woken by the future's waiters, which the thread that
    # reads the reply wakes at once (a callback still holding the pump thread);
    # wrap_future by a done-callback, now run in the pump thread.
    ex, _ = executor
    release, ran = threading.Event(), []
    try:
        future = ex.submit(nap, 0.3)
        future.add_done_callback(held(release, ran))  # holds the pump: the others must not
        waiter = threading.Thread(target=future.result, kwargs={"timeout": HOLD})
        waiter.start()  # reads the reply itself
        done, _ = wait([future], timeout=HOLD, return_when=FIRST_COMPLETED)
        assert done == {future}
        assert list(as_completed([future], timeout=HOLD)) == [future]
        waiter.join(HOLD)
        assert not waiter.is_alive()
        assert not ran, "the callback ended already"
    finally:
        release.set()
    wait_for("the callback", lambda: ran)

    async def wrapped() -> tuple[Any, str]:
        future = ex.submit(nap, 0.3)
        settled = SettledBy(future)
        waiter = threading.Thread(target=future.result, kwargs={"timeout": HOLD})
        waiter.start()  # reads the reply itself, while the event loop awaits the wrapper
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), HOLD), settled.thread
        finally:
            waiter.join(HOLD)

    value, _ = asyncio.run(wrapped())
    assert value == 0.3
