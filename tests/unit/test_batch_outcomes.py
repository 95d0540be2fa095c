"""How a batch's outcomes settle its calls (farm.executor.flight.partial and complete): by
the index they come with, once each, whether they come in parts, again in a rerun, or not
at all."""

from __future__ import annotations

import pickle
import queue
import threading
import time
from concurrent.futures import Future
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from farm.errors import JobError
from farm.executor import batchflush, call, spill
from farm.executor.flight import Flight, WorkItem, complete, partial
from farm.executor.payload import OK, SINGLE
from tests.helpers.flights import SIGNER, Task


@pytest.fixture(autouse=True)
def spill_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large outcome's file goes to this test's directory: the worker's default, the
    spill directory beside the real farm's key, kept one for every run of these tests."""
    settings = spill.SpillSettings(tmp_path / "spill", spill.DEFAULT_MAX_SPILL_MB << 20)
    monkeypatch.setattr(call, "_spill", settings)


def running(count: int) -> tuple[Flight, Task]:
    flight = Flight([WorkItem(Future(), None) for _ in range(count)])  # type: ignore[arg-type]
    for item in flight.items:
        item.future.set_running_or_notify_cancel()
    return flight, Task(flight)


def sealed(flight: Flight, first: int, values: list[Any]) -> bytes:
    """What a worker sends for the batch's calls from ``first`` on (call._seal_batch)."""
    return call._seal_batch(None, SIGNER, flight.call_id, first, [(OK, v) for v in values])


def results(flight: Flight) -> list[Any]:
    return [item.future.result(0) for item in flight.items]


def test_outcomes_sent_in_parts_settle_the_calls_they_name() -> None:
    # A long batch sends what it has every BATCH_FLUSH_EVERY seconds (WORK_DATA), the rest
    # at its end: each part's outcomes are those of the calls from its index on.
    flight, task = running(4)
    partial(task, SIGNER, sealed(flight, 0, ["a", "b"]))  # type: ignore[arg-type]
    task.result = sealed(flight, 2, ["c", "d"])
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]  # nothing to send again
    assert results(flight) == ["a", "b", "c", "d"]


def test_a_rerun_leaves_the_calls_settled_before_its_worker_died_as_they_were() -> None:
    # The server runs the job again on another worker (job_retries): its outcomes start
    # from the first call again, and those already given to the caller stay.
    flight, task = running(3)
    partial(task, SIGNER, sealed(flight, 0, ["a"]))  # type: ignore[arg-type]
    task.result = sealed(flight, 0, ["rerun a", "b", "c"])
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    assert results(flight) == ["a", "b", "c"]


def test_a_batch_that_settled_none_of_its_calls_fails_them_not_sends_them_again() -> None:
    # The calls a batch left unrun go again (a pool's timeout ran short); a batch that ran
    # none would go again for ever.
    flight, task = running(2)
    task.result = sealed(flight, 0, [])
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    for item in flight.items:
        with pytest.raises(JobError, match="job H:1 lost this call"):
            item.future.result(0)


def test_a_batch_late_for_its_pool_timeout_runs_its_first_call_and_leaves_the_rest() -> None:
    # Under a pool's timeout a batch runs the calls that end within 3/4 of it, the first
    # however late the job began (a slow initializer, a spilled body's read): left unrun,
    # every batch of a slow start would come back with none, and its calls fail.
    flight, task = running(3)
    job = SimpleNamespace(handle="H:1", timeout=10)
    calls = pickle.dumps([pickle.dumps(((word,), {})) for word in ("a", "bb", "ccc")])
    task.result = call._run_batch(
        job,
        SIGNER,
        flight.call_id,
        pickle.dumps(len),
        memoryview(calls),
        SINGLE,
        False,
        started=time.monotonic() - 100,  # far past 3/4 of the 10 s
    )
    unrun = complete(task, SIGNER)  # type: ignore[arg-type]
    assert flight.items[0].future.result(0) == 1
    assert unrun == flight.items[1:]  # sent again, in a job of their own


def test_a_batch_that_sends_its_outcomes_in_parts_gives_each_call_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A part after each call (as when every call outlasts BATCH_FLUSH_EVERY): each part
    # must say the index it starts from, or the caller's calls get one another's results.
    monkeypatch.setattr(batchflush, "BATCH_FLUSH_EVERY", 0.0)
    flight, task = running(3)
    job = SimpleNamespace(
        handle="H:1",
        timeout=None,
        send_data=lambda data: partial(task, SIGNER, data),  # type: ignore[arg-type]
    )
    calls = pickle.dumps([pickle.dumps(((word,), {})) for word in ("a", "bb", "ccc")])
    task.result = call._run_batch(
        job, SIGNER, flight.call_id, pickle.dumps(len), memoryview(calls), SINGLE, False, 0.0
    )
    assert [item.future.done() for item in flight.items] == [True, True, False]  # two parts
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    assert results(flight) == [1, 2, 3]


#: Held open by the test: a batch's "held" call runs until it is set.
GATE = threading.Event()
#: What the "quick" call returns and the "held" call goes on changing (grows).
SHARED: dict[Any, Any] = {}


def held(word: str) -> str:
    """A call that runs until the test lets it end (``GATE``) where it is "held"."""
    if word == "held":
        assert GATE.wait(30), "the test never let the call end"
    return word


def grows(word: str) -> Any:
    """ "quick" returns SHARED; "held" adds to it until the test lets it end."""
    if word == "quick":
        SHARED.clear()
        SHARED["quick"] = 1
        return SHARED
    count = 0
    while not GATE.is_set():
        SHARED[count] = Fraction(count, 7)  # pickled by Python code: a thread switch in it
        count += 1
    return word


def batch_in_thread(fn: Any, words: list[str]) -> tuple[Flight, Task, queue.Queue[bytes], Any]:
    """``fn``'s calls of ``words`` run as a batch in a thread of their own (the worker's main
    thread, as it were); the parts it sends ahead go to the queue."""
    GATE.clear()
    flight, task = running(len(words))
    parts: queue.Queue[bytes] = queue.Queue()
    job = SimpleNamespace(handle="H:1", timeout=None, send_data=parts.put)
    calls = pickle.dumps([pickle.dumps(((word,), {})) for word in words])
    args = (job, SIGNER, flight.call_id, pickle.dumps(fn), memoryview(calls), SINGLE, False, 0)
    batch = threading.Thread(target=lambda: setattr(task, "result", call._run_batch(*args)))
    batch.start()
    return flight, task, parts, batch


def test_a_finished_calls_outcome_is_sent_while_a_later_call_runs() -> None:
    # Behind a call of 20 s, a finished call's outcome waited for its end (sent only
    # between calls): answered 20 s late, and run again when that worker died.
    flight, task, parts, batch = batch_in_thread(held, ["quick", "held", "after"])
    try:
        partial(task, SIGNER, parts.get(timeout=10))  # type: ignore[arg-type]  # while "held" runs
        assert flight.items[0].future.result(0) == "quick"
        assert not flight.items[1].future.done() and batch.is_alive()
    finally:
        GATE.set()
        batch.join(30)
    while not parts.empty():
        partial(task, SIGNER, parts.get())  # type: ignore[arg-type]
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    assert results(flight) == ["quick", "held", "after"]


def test_an_outcome_sent_while_a_later_call_runs_is_what_its_call_returned() -> None:
    # Pickled by the sending thread while the next call changed it (a Fraction's __reduce__
    # is Python code: that call runs on meanwhile), a returned dict came back as
    # RuntimeError('dictionary changed size during iteration'), a call that succeeded
    # reported failed, or mixed from two moments of that call. It is pickled as it returns.
    flight, task, parts, batch = batch_in_thread(grows, ["quick", "held"])
    try:
        partial(task, SIGNER, parts.get(timeout=10))  # type: ignore[arg-type]  # while "held" runs
        assert flight.items[0].future.result(0) == {"quick": 1}
    finally:
        GATE.set()
        batch.join(30)


def after_a_large_one(word: str) -> Any:
    """ "large" returns more than the spill limit; "quick" returns SHARED, which "change"
    changes."""
    if word == "large":
        return [b"x" * (2 << 20)]  # past SPILL_THRESHOLD (1 MiB): kept as it is, not pickled
    if word == "quick":
        SHARED.clear()
        SHARED["quick"] = 1
        return SHARED
    SHARED["changed by a later call"] = 2
    return word


def test_an_outcome_after_a_large_one_is_still_what_its_call_returned() -> None:
    # Past an outcome too large to pickle twice, the later ones were kept unpickled too,
    # and came back changed by the calls after them.
    flight, task, parts, batch = batch_in_thread(after_a_large_one, ["large", "quick", "change"])
    batch.join(30)
    while not parts.empty():
        partial(task, SIGNER, parts.get())  # type: ignore[arg-type]
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    assert flight.items[1].future.result(0) == {"quick": 1}


def large_settled(word: str) -> Any:
    """ "large" returns 1.5 MiB of bytes (settled, immutable); "held" waits for the test."""
    return b"x" * (3 << 19) if word == "large" else held(word)


def test_the_thread_leaves_a_part_too_large_to_the_main_thread() -> None:
    # Two settled results of 1.5 MiB, then a slow call: the thread sent them as one part of
    # 3 MiB, past the farm's spill limit, and both calls failed with SpillTooLarge, as one
    # part (_seal_result); the batch's end splits them (_seal_batch).
    _, _, parts, batch = batch_in_thread(large_settled, ["large", "large", "held"])
    try:
        with pytest.raises(queue.Empty):  # the time under test: the thread's looks
            parts.get(timeout=4 * batchflush.BATCH_FLUSH_EVERY)
    finally:
        GATE.set()
        batch.join(30)
