"""A batch's answer split into large parts (farm.executor.call._seal_batch): the worker's
Job.unsent removes only the files whose WORK_DATA did not leave, not those the server
already took for the caller."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from farm.executor import call, spill
from farm.executor.flight import Flight, WorkItem, complete, partial
from farm.executor.payload import OK
from farm.executor.signing import Signer


class Job:
    """farm.Worker's Job as the call sees it: send_data says whether the data left."""

    def __init__(self, leaves: bool) -> None:
        self.unsent: Callable[[], None] | None = None
        self.sent: list[bytes] = []
        self.leaves = leaves
        self.handle = "H:1"
        self.timeout = None

    def send_data(self, data: bytes) -> bool:
        if self.leaves:
            self.sent.append(data)
        return self.leaves


class Task:
    def __init__(self, owner: Flight) -> None:
        self.owner = owner
        self.handle = "H:1"


def _seal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: Job) -> tuple[Flight, Signer]:
    monkeypatch.setattr(call, "_spill", spill.SpillSettings(tmp_path / "spill", 4 << 20))
    signer = Signer(b"k" * 32)
    flight = Flight([WorkItem(Future(), None) for _ in range(3)])
    for item in flight.items:
        item.future.set_running_or_notify_cancel()
    # Three outcomes of 2 MiB: together over the 4 MiB limit, so each goes alone.
    outcomes: list[Any] = [(OK, bytes([i]) * (2 << 20)) for i in range(3)]
    call._seal_batch(job, signer, flight.call_id, 0, outcomes)
    return flight, signer


def test_the_parts_that_left_keep_their_files_when_the_final_answer_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Job(leaves=True)
    flight, signer = _seal(tmp_path, monkeypatch, job)
    assert len(job.sent) == 2 and len(os.listdir(tmp_path / "spill")) == 3
    assert job.unsent is not None
    job.unsent()  # the server died after forwarding the parts: the last answer is lost
    assert len(os.listdir(tmp_path / "spill")) == 2, "only the last answer's file goes"
    partial(Task(flight), signer, job.sent[0])  # the caller reads a part it was sent
    assert flight.items[0].future.result() == b"\x00" * (2 << 20)


def test_the_parts_that_did_not_leave_have_their_files_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Job(leaves=False)  # the server was gone before the first part
    _seal(tmp_path, monkeypatch, job)
    assert len(os.listdir(tmp_path / "spill")) == 3
    assert job.unsent is not None
    job.unsent()
    assert os.listdir(tmp_path / "spill") == []


def test_each_part_of_a_split_answer_settles_its_own_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last outcome goes in the final answer, with its own index: the caller gets every
    # call's own result, and none is sent again (to run twice).
    monkeypatch.setattr(call, "_spill", spill.SpillSettings(tmp_path / "spill", 4 << 20))
    signer = Signer(b"k" * 32)
    flight = Flight([WorkItem(Future(), None) for _ in range(3)])
    for item in flight.items:
        item.future.set_running_or_notify_cancel()
    job = Job(leaves=True)
    outcomes: list[Any] = [(OK, bytes([i]) * (2 << 20)) for i in range(3)]
    final = call._seal_batch(job, signer, flight.call_id, 0, outcomes)
    task = Task(flight)
    for part in job.sent:
        partial(task, signer, part)  # type: ignore[arg-type]
    task.error, task.result = None, final  # type: ignore[attr-defined]
    assert complete(task, signer) == []  # type: ignore[arg-type]
    assert [item.future.result(0) for item in flight.items] == [o[1] for o in outcomes]
