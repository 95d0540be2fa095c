"""A batch under a pool's timeout gives back the calls it has not started once a call runs
past 3/4 of the timeout (farm.executor.batchflush.Outgoing.cut_due), and the caller takes
them off the job (farm.executor.flight.Flight.cut): a call that overran the timeout killed
its worker, and failed with WorkerLost every call after it in the batch, unrun."""

from __future__ import annotations

import pickle
import queue
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from farm.errors import JobFailed, WorkerLost
from farm.executor import batchflush, call
from farm.executor.flight import Flight, WorkItem, complete, partial
from farm.executor.payload import OK, SINGLE
from tests.helpers.flights import SIGNER, Task

#: Held open by the test: the batch's "held" call runs until it is set.
GATE = threading.Event()
#: The words of the calls that ran, in order.
RAN: list[str] = []


def held(word: str) -> str:
    """A call that runs until the test lets it end (``GATE``) where it is "held"."""
    RAN.append(word)
    if word == "held":
        assert GATE.wait(30), "the test never let the call end"
    return word


def timed_batch(words: list[str], timeout: float) -> tuple[Flight, Task, Any, threading.Thread]:
    """``held``'s calls of ``words`` as a batch of a pool with ``timeout``, run in a thread
    (the worker's main thread, as it were); what it sends ahead goes to the queue."""
    GATE.clear()
    RAN.clear()
    flight = Flight([WorkItem(Future(), None) for _ in words])  # type: ignore[arg-type]
    for item in flight.items:
        item.future.set_running_or_notify_cancel()
    task = Task(flight)
    parts: queue.Queue[bytes] = queue.Queue()
    job = SimpleNamespace(handle="H:1", timeout=timeout, send_data=parts.put)
    body = memoryview(pickle.dumps([pickle.dumps(((word,), {})) for word in words]))
    args = (job, SIGNER, flight.call_id, pickle.dumps(held), body, SINGLE, False)
    batch = threading.Thread(
        target=lambda: setattr(task, "result", call._run_batch(*args, time.monotonic()))
    )
    batch.start()
    return flight, task, parts, batch


def given_back(task: Task, parts: queue.Queue[bytes]) -> list[WorkItem]:
    """The calls the batch gives back: its parts read until one does."""
    while True:
        again = partial(task, SIGNER, parts.get(timeout=10))  # type: ignore[arg-type]
        if again:
            return again


def drained(task: Task, parts: queue.Queue[bytes]) -> list[WorkItem]:
    """The calls the parts left in the queue give back (the outcomes they carry settled)."""
    again = []
    while not parts.empty():
        again += partial(task, SIGNER, parts.get())  # type: ignore[arg-type]
    return again


def test_a_call_past_three_quarters_of_the_timeout_gives_back_the_calls_after_it() -> None:
    flight, task, parts, batch = timed_batch(["quick", "held", "a", "b"], timeout=0.4)
    items = list(flight.items)
    try:
        assert given_back(task, parts) == items[2:]  # while "held" still runs
        assert batch.is_alive() and not items[1].future.done()
        assert flight.items == items[:2]
    finally:
        GATE.set()
        batch.join(30)
    assert drained(task, parts) == []
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    assert [f.future.result(0) for f in items[:2]] == ["quick", "held"]
    assert RAN == ["quick", "held"]  # given back, so not run here too
    assert not any(item.future.done() for item in items[2:])  # theirs to settle elsewhere


def test_the_worker_killed_at_the_timeout_fails_only_the_calls_it_kept() -> None:
    flight, task, parts, batch = timed_batch(["held", "a", "b"], timeout=0.4)
    items = list(flight.items)
    try:
        assert given_back(task, parts) == items[1:]
    finally:
        GATE.set()
        batch.join(30)
    task.error = JobFailed("job H:1 failed")  # the server's WORK_FAIL at the timeout
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    with pytest.raises(WorkerLost):
        items[0].future.result(0)
    assert not any(item.future.done() for item in items[1:])


def test_a_batch_cut_to_one_call_is_still_read_as_a_batch() -> None:
    # The job's answer carries its outcomes with their index: a flight cut to one call
    # read it as a single call's outcome, and settled the call with the (first, list) pair.
    flight, task, parts, batch = timed_batch(["held", "a"], timeout=0.4)
    try:
        assert len(given_back(task, parts)) == 1
    finally:
        GATE.set()
        batch.join(30)
    assert drained(task, parts) == []
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    assert flight.items[0].future.result(0) == "held"


def test_without_a_timeout_a_long_call_gives_nothing_back() -> None:
    flight, task, parts, batch = timed_batch(["held", "a"], timeout=0)
    try:
        with pytest.raises(queue.Empty):  # the time under test: the thread's looks
            parts.get(timeout=4 * batchflush.LOOK_EVERY)
    finally:
        GATE.set()
        batch.join(30)
    assert drained(task, parts) == []
    assert complete(task, SIGNER) == []  # type: ignore[arg-type]
    assert [item.future.result(0) for item in flight.items] == ["held", "a"]


def test_the_cut_spares_the_call_the_main_thread_is_about_to_start() -> None:
    # Between calls the outcomes so far are in: the next call may already be starting, so
    # the cut is the one after it, and the main thread asks before each call, under the
    # same lock the cut is made under.
    sent: list[tuple[int, int, bytes]] = []
    outgoing = batchflush.Outgoing(
        lambda first, outcomes: None,
        lambda first, count, pickled: sent.append((first, count, pickled)),
        5,
        1 << 20,
        time.monotonic() - 1,  # past the deadline
    )
    try:
        outgoing.add(0, (OK, "done"))
        outgoing.cut_due()
        outgoing.cut_due()  # once
    finally:
        outgoing.finish()
    assert [(first, count, pickle.loads(data)) for first, count, data in sent] == [(2, 0, (2, []))]
    assert outgoing.may_start(1) and not outgoing.may_start(2)
