"""A client session, the server and a worker session wired back to back, with no sockets.

In the spirit of h11's ConnectionPair: the client's and the worker's sans-I/O
sessions exchange bytes with the server's real ``Connection`` objects (codec,
job model, reply encoding, write batching), whose transports are in-memory
buffers. No event loop runs; every byte is moved by the test, so each step can
be asserted.
"""

from __future__ import annotations

from typing import Any

import pytest

from farm.errors import JobFailed
from farm.protocol.client import ClientSession, JobCreated, JobEnded, JobStatus, Task
from farm.protocol.worker import JobAssigned, WorkerSession, WorkerState
from farm.server.hub import Hub
from farm.server.options import parse_args
from tests.helpers.pair import Wire


@pytest.fixture
def hub() -> Hub:
    return Hub(parse_args(["--store", "none"]))


def a_worker(hub: Hub, *functions: str) -> Wire:
    wire = Wire(hub, WorkerSession({f: None for f in functions}))
    wire.session.connected()  # type: ignore[union-attr]
    assert wire.pump() == []
    return wire


def grab(wire: Wire) -> JobAssigned | None:
    """One grab; the assignment, or None after NO_JOB (the worker then sleeps)."""
    session = wire.session
    assert isinstance(session, WorkerSession)
    session.grab()
    events = wire.pump()
    if session.state is WorkerState.SLEEPING:
        wire.pump()  # PRE_SLEEP goes out
        return None
    (assigned,) = events
    assert isinstance(assigned, JobAssigned)
    return assigned


def submit(client: Wire, function: str, data: bytes, *, unique: str = "") -> Task[Any]:
    session = client.session
    assert isinstance(session, ClientSession)
    task: Task[Any] = Task(function, data, unique=unique)
    session.submit(task)
    events = client.pump()
    assert events == [JobCreated(task=task)] and task.handle
    return task


def test_a_job_runs_and_its_result_comes_back(hub: Hub) -> None:
    worker = a_worker(hub, "reverse")
    assert grab(worker) is None, "nothing queued yet: the worker sleeps"
    client = Wire(hub, ClientSession("mem"))
    task = submit(client, "reverse", b"Hello")
    worker_session = worker.session
    assert isinstance(worker_session, WorkerSession)
    assert worker.pump() == [] and worker_session.state is WorkerState.READY, "NOOP woke it"
    job = grab(worker)
    assert job is not None and (job.handle, job.function, job.data) == (
        task.handle,
        "reverse",
        b"Hello",
    )
    worker_session.complete(job.data[::-1])
    worker.pump()
    assert client.pump() == [JobEnded(task=task)]
    assert task.done and task.result == b"olleH" and task.error is None


def test_a_failed_job_fails_its_caller(hub: Hub) -> None:
    worker = a_worker(hub, "f")
    client = Wire(hub, ClientSession("mem"))
    task = submit(client, "f", b"x")
    job = grab(worker)
    assert job is not None
    worker.session.fail()  # type: ignore[union-attr]
    worker.pump()
    assert client.pump() == [JobEnded(task=task)]
    assert isinstance(task.error, JobFailed) and task.result is None


def test_a_job_whose_worker_is_lost_is_requeued_to_another(hub: Hub) -> None:
    first, second = a_worker(hub, "f"), a_worker(hub, "f")
    client = Wire(hub, ClientSession("mem"))
    task = submit(client, "f", b"x")
    job = grab(first)
    assert job is not None and job.handle == task.handle
    assert grab(second) is None, "the only job is taken"
    first.drop()
    second.pump()  # the requeue woke the sleeper
    again = grab(second)
    assert again is not None and again.handle == task.handle, "same job, same handle"
    second.session.complete(b"done")  # type: ignore[union-attr]
    second.pump()
    assert client.pump() == [JobEnded(task=task)] and task.result == b"done"


def test_a_status_query_sees_the_job_running_and_its_progress(hub: Hub) -> None:
    worker = a_worker(hub, "f")
    client = Wire(hub, ClientSession("mem"))
    session = client.session
    assert isinstance(session, ClientSession)
    task = submit(client, "f", b"x")
    assert task.handle is not None
    job = grab(worker)
    assert job is not None
    worker.session.send_status(3, 10)  # type: ignore[union-attr]
    worker.pump()
    client.pump()  # the forwarded WORK_STATUS
    query = session.get_status(task.handle)
    client.pump()
    assert query.done and query.result.status == JobStatus(True, True, 3, 10)  # type: ignore[attr-defined]
    gone = session.get_status("H:nowhere:1")
    client.pump()
    assert gone.result.status == JobStatus(False, False, 0, 0)  # type: ignore[attr-defined]
