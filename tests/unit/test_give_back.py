"""A job assigned to a worker after its CANT_DO or RESET_ABILITIES left (a drain: `farm scale`
down, `farm restart`) is given back unrun (docs/held-grab.md, give-back): farm's server puts
it back at the head of its queue with no retry counted, the client is told nothing, and the
next worker runs it. Under --job-retries 1 it was failed as a poison job.

A peer that did not ask (gearmand's rule, and a raw worker may give up its function while it
runs the job) still counts the retry."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.protocol.client import ClientSession, JobCreated, JobEnded, Task
from farm.protocol.worker import JobAssigned, WorkerSession, WorkerState
from farm.server.hub import Hub
from farm.server.options import parse_args
from tests.helpers.pair import Wire


@pytest.fixture
def hub() -> Hub:
    return Hub(parse_args(["--store", "none", "--job-retries", "1"]))


def a_worker(hub: Hub, *, held: bool) -> tuple[Wire, WorkerSession]:
    session = WorkerSession({"f": None}, held_grab=held)
    wire = Wire(hub, session)
    session.connected()
    assert wire.pump() == []
    assert session.held is held
    return wire, session


def deliver(wire: Wire) -> None:
    """What the worker session queued, read by the server (its answers left unread)."""
    wire.conn.data_received(wire.session.data_to_send())


def submitted(hub: Hub) -> tuple[Wire, Task[None]]:
    client = Wire(hub, ClientSession("mem"))
    task: Task[None] = Task("f", b"x")
    client.session.submit(task)  # type: ignore[union-attr]
    assert client.pump() == [JobCreated(task=task)]
    return client, task


def drain(worker: WorkerSession) -> None:
    worker.reset_abilities()  # farm.Worker's stop() with its grab out


def unregister(worker: WorkerSession) -> None:
    worker.remove_ability("f")  # farm.Worker.unregister("f") with its grab out


@pytest.mark.parametrize("let_go", [drain, unregister], ids=["reset", "cant_do"])
@pytest.mark.parametrize("how", ["answered", "pushed", "plain"])
def test_a_job_that_came_after_the_worker_let_go_is_given_back_with_no_retry(
    hub: Hub, how: str, let_go: Callable[[WorkerSession], None]
) -> None:
    wire, worker = a_worker(hub, held=how != "plain")
    if how == "pushed":  # an idle held grab; the job is pushed to it before the reset is read
        worker.grab()
        deliver(wire)
        let_go(worker)
        client, task = submitted(hub)
        deliver(wire)  # the server reads the reset after it pushed the job
    else:  # the job waits: the grab is answered at once, before the server reads the reset
        client, task = submitted(hub)
        worker.grab()
        let_go(worker)
        deliver(wire)
    (job,) = [e for e in worker.receive(wire.transport.take()) if isinstance(e, JobAssigned)]
    assert job.handle == task.handle
    assert worker.withdrawn("f") or how != "plain" or let_go is drain
    worker.taken_back()  # farm.Worker lets it go: another worker runs it
    deliver(wire)  # (a pushed job's JOB_ACCEPT, sent as it was read: dropped)

    assert client.pump() == [], "the client is told nothing: the job did not run"
    (queued,) = hub.jobs.jobs.values()
    assert queued.retries == 0 and queued.worker is None and queued.queued
    stats = hub.jobs.functions[b"f"].stats
    assert stats.retried == [0, 0, 0] and stats.failed == [0, 0, 0]
    assert not hub.jobs.poison

    other, other_session = a_worker(hub, held=False)
    other_session.grab()
    (again,) = other.pump()
    assert isinstance(again, JobAssigned) and again.handle == task.handle
    other_session.complete(b"ran once")
    other.pump()
    assert client.pump() == [JobEnded(task=task)] and task.result == b"ran once"
    assert wire.transport.take() == b"", "nothing for the worker that gave it back"


def test_a_given_back_job_goes_to_the_head_of_its_queue(hub: Hub) -> None:
    # As a push taken back: it was first in line, and did not run.
    _, first = submitted(hub)
    _, second = submitted(hub)
    wire, worker = a_worker(hub, held=False)
    worker.grab()
    drain(worker)
    deliver(wire)
    (job,) = worker.receive(wire.transport.take())
    assert isinstance(job, JobAssigned) and job.handle == first.handle
    worker.taken_back()
    other, other_session = a_worker(hub, held=False)
    other_session.grab()
    (again,) = other.pump()
    assert isinstance(again, JobAssigned) and again.handle == first.handle


def test_a_peer_that_did_not_ask_counts_the_retry_as_gearmand(hub: Hub) -> None:
    # A raw worker (PHP's, Perl's, libgearman's) may read the job and give up its function
    # while it runs it: the server cannot tell, and counts a retry (docs/server.md, -j).
    client, task = submitted(hub)
    raw = Wire(hub, WorkerSession({}))  # only its transport and connection are used
    raw.conn.data_received(p.encode_req(T.CAN_DO, b"f") + p.encode_req(T.GRAB_JOB))
    assert p.Decoder().feed(raw.transport.take())[0].type == T.JOB_ASSIGN  # type: ignore[union-attr]
    raw.conn.data_received(p.encode_req(T.CANT_DO, b"f"))
    hub.flush()
    (ended,) = client.pump()
    assert ended == JobEnded(task=task) and task.error is not None, "-j 1: out of retries"
    assert hub.jobs.poison


def test_a_lost_connection_with_a_job_in_hand_still_counts(hub: Hub) -> None:
    client, task = submitted(hub)
    wire, worker = a_worker(hub, held=False)
    worker.grab()
    (job,) = wire.pump()
    assert isinstance(job, JobAssigned) and worker.state is WorkerState.WORKING
    wire.drop()
    hub.flush()
    (ended,) = client.pump()
    assert ended == JobEnded(task=task) and task.error is not None, "-j 1: at most once"


def test_farm_s_worker_asks_for_give_back_on_each_connection() -> None:
    worker = WorkerSession({"f": None})
    worker.connected()
    asked = [
        pkt.args[0]  # type: ignore[union-attr]
        for pkt in p.Decoder(allow_admin=False).feed(worker.data_to_send())
        if pkt.type == T.OPTION_REQ  # type: ignore[union-attr]
    ]
    assert p.OPTION_GIVE_BACK in asked
