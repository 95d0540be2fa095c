"""Held grab (docs/held-grab.md), a worker session and the server's connection back to back.

An idle worker that negotiated ``held-grab`` waits on its grab instead of
NO_JOB → PRE_SLEEP → NOOP → GRAB_JOB: the job is pushed to it (NOOP, then the
assignment) and it accepts it at once with JOB_ACCEPT.
"""

from __future__ import annotations

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.protocol.client import ClientSession, JobCreated, JobEnded, Task
from farm.protocol.events import ServerErrorNotice
from farm.protocol.worker import JobAssigned, WorkerSession, WorkerState
from farm.server.hub import Hub
from farm.server.options import parse_args
from tests.helpers.pair import Wire


@pytest.fixture
def hub() -> Hub:
    return Hub(parse_args(["--store", "none"]))


def held_worker(hub: Hub, *functions: str) -> tuple[Wire, WorkerSession]:
    session = WorkerSession({f: None for f in functions}, held_grab=True)
    wire = Wire(hub, session)
    session.connected()
    assert wire.pump() == []
    assert session.held, "the server agreed (OPTION_RES held-grab)"
    return wire, session


def sent(wire: Wire) -> list[int]:
    """The packet types the session has queued for the server (without sending them)."""
    out = wire.session.data_to_send()
    packets = p.Decoder(allow_admin=False).feed(out)
    wire.conn.data_received(out)
    return [pkt.type for pkt in packets]  # type: ignore[union-attr]


def test_an_idle_grab_is_held_and_the_job_is_pushed_and_accepted(hub: Hub) -> None:
    wire, worker = held_worker(hub, "f")
    worker.grab()
    assert wire.pump() == [] and worker.state is WorkerState.GRABBING, "no NO_JOB"
    assert wire.transport.take() == b"", "nothing at all: the grab waits"

    client = Wire(hub, ClientSession("mem"))
    task: Task[None] = Task("f", b"x")
    client.session.submit(task)  # type: ignore[union-attr]
    assert client.pump() == [JobCreated(task=task)]

    pushed = wire.transport.take()
    assert [pkt.type for pkt in p.Decoder().feed(pushed)] == [T.NOOP, T.JOB_ASSIGN_UNIQ]  # type: ignore[union-attr]
    (job,) = worker.receive(pushed)
    assert isinstance(job, JobAssigned) and job.handle == task.handle
    assert sent(wire) == [T.JOB_ACCEPT], "accepted before it runs"
    assert wire.conn.pushed is None

    worker.complete(b"done")
    worker.grab()
    assert sent(wire) == [T.WORK_COMPLETE, T.GRAB_JOB_UNIQ]
    assert client.pump() == [JobEnded(task=task)] and task.result == b"done"
    assert wire.transport.take() == b"", "the next grab is held again"


def test_a_grab_with_work_waiting_is_answered_at_once_and_needs_no_accept(hub: Hub) -> None:
    wire, worker = held_worker(hub, "f")
    client = Wire(hub, ClientSession("mem"))
    task: Task[None] = Task("f", b"x")
    client.session.submit(task)  # type: ignore[union-attr]
    client.pump()
    worker.grab()
    (job,) = wire.pump()
    assert isinstance(job, JobAssigned) and job.handle == task.handle
    assert worker.data_to_send() == b"", "a plain answer is not accepted"


def test_reset_abilities_ends_a_held_grab_with_no_job(hub: Hub) -> None:
    wire, worker = held_worker(hub, "f")
    worker.grab()
    wire.pump()
    worker.reset_abilities()
    assert wire.pump() == [] and worker.state is WorkerState.READY
    assert worker.data_to_send() == b"", "no PRE_SLEEP after a held grab ends"
    assert not wire.conn.sleeping and not hub.jobs.functions[b"f"].sleepers


def test_a_held_grab_with_no_function_sleeps_and_a_function_registered_later_gets_its_job(
    hub: Hub,
) -> None:
    # Its one CAN_DO refused, the connection served nothing and its held grab got NO_JOB at
    # once; the worker, taking every held NO_JOB for its own reset's answer, went back to
    # READY and grabbed again at once, forever.
    worker = WorkerSession({"a\x85b": None}, held_grab=True)
    wire = Wire(hub, worker)
    worker.connected()
    worker.grab()
    (refused,) = wire.pump()
    assert isinstance(refused, ServerErrorNotice) and refused.code == "INVALID_COMMAND"
    assert worker.held, "the server agreed (OPTION_RES held-grab)"
    assert worker.state is WorkerState.SLEEPING, "no grab again"
    assert sent(wire) == [T.PRE_SLEEP], "the standard dance: asleep until a NOOP"
    assert wire.transport.take() == b""

    client = Wire(hub, ClientSession("mem"))
    task: Task[None] = Task("f", b"x")
    client.session.submit(task)  # type: ignore[union-attr]
    client.pump()
    worker.add_ability("f", None)  # registered later: it looks at once, as if woken
    worker.grab()
    events = wire.pump()
    assert [e.handle for e in events if isinstance(e, JobAssigned)] == [task.handle]


def test_a_drained_held_grab_sleeps_rather_than_grabs_again(hub: Hub) -> None:
    wire, worker = held_worker(hub, "f")
    worker.grab()
    wire.pump()
    wire.conn.drain()  # farm's admin drain: the held grab ends with NO_JOB, as a plain one
    hub.flush()
    assert worker.receive(wire.transport.take()) == []
    assert worker.state is WorkerState.SLEEPING, "a grab now got NO_JOB again, forever"
    assert sent(wire) == [T.PRE_SLEEP]
    assert wire.transport.take() == b"", "a drained PRE_SLEEP is never answered"


def test_a_reset_sent_after_a_job_came_leaves_no_stale_reset_answer(hub: Hub) -> None:
    # The grab was answered (a job) before the server read the reset: the reset ends no
    # grab, and a later NO_JOB is no answer of it.
    wire, worker = held_worker(hub, "f")
    client = Wire(hub, ClientSession("mem"))
    client.session.submit(Task("f", b"x"))  # type: ignore[union-attr]
    client.pump()
    worker.grab()
    worker.reset_abilities()  # sent behind the grab, answered by the job
    assert sent(wire) == [T.GRAB_JOB_UNIQ, T.RESET_ABILITIES]
    (job,) = worker.receive(wire.transport.take())
    assert isinstance(job, JobAssigned)
    worker.taken_back()  # put back by the reset, as farm.Worker lets it go
    worker.grab()
    assert wire.pump() == [] and worker.state is WorkerState.SLEEPING
    assert sent(wire) == [T.PRE_SLEEP]


def test_a_pushed_job_not_accepted_in_time_goes_to_another_worker(hub: Hub) -> None:
    stuck, stuck_session = held_worker(hub, "f")
    stuck_session.grab()
    stuck.pump()
    other, other_session = held_worker(hub, "f")
    client = Wire(hub, ClientSession("mem"))
    task: Task[None] = Task("f", b"x")
    client.session.submit(task)  # type: ignore[union-attr]
    client.pump()
    pushed = stuck.conn.pushed
    assert pushed is not None and stuck.transport.take()  # it never reads it

    stuck.conn.not_accepted(pushed)  # what the WAKE_DEADLINE timer does
    assert pushed.worker is None and pushed.retries == 0, "back in the queue, no retry"
    hub.flush()
    revoke = p.encode_res(T.JOB_REVOKE, pushed.handle)
    assert stuck.transport.take() == revoke, "it asked to be told (OPTION_REQ revoke)"
    other_session.grab()
    (job,) = other.pump()
    assert isinstance(job, JobAssigned) and job.handle == task.handle
    other_session.complete(b"from the other")
    other.pump()
    assert client.pump() == [JobEnded(task=task)] and task.result == b"from the other"

    # The stuck worker had read the push before the revoke (the race docs/held-grab.md
    # names), so it accepts and answers: dropped, no ERROR, no second result.
    stuck.conn.data_received(
        p.encode_req(T.JOB_ACCEPT, pushed.handle)
        + p.encode_req(T.WORK_COMPLETE, pushed.handle, b"late")
    )
    hub.flush()
    assert stuck.transport.take() == b"" and client.transport.take() == b""


def test_against_a_server_without_held_grab_the_standard_dance_goes_on() -> None:
    session = WorkerSession({"f": None}, held_grab=True)
    session.connected()
    assert T.OPTION_REQ in [pkt.type for pkt in p.Decoder().feed(session.data_to_send())]  # type: ignore[union-attr]
    # gearmand's answer to an option it does not know, then NO_JOB for the grab.
    session.grab()
    session.data_to_send()
    events = session.receive(
        p.encode_res(T.ERROR, b"UNKNOWN_OPTION", b"Server does not recognize given option")
        + p.encode_res(T.NO_JOB)
    )
    assert events == [] and not session.held, "no warning for the refused option"
    assert session.state is WorkerState.SLEEPING
    assert [pkt.type for pkt in p.Decoder().feed(session.data_to_send())] == [T.PRE_SLEEP]  # type: ignore[union-attr]


def test_job_accept_is_unknown_to_a_connection_that_did_not_ask(hub: Hub) -> None:
    wire = Wire(hub, ClientSession("mem"))
    wire.conn.data_received(p.encode_req(T.JOB_ACCEPT, b"H:x:1"))
    assert wire.conn.closed, "as any packet type the server does not know"


def test_wake_deadline_sets_both_deadlines_and_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert Hub(parse_args(["--store", "none"])).unaccepted.length == 0.5, "the default"
    hub = Hub(parse_args(["--store", "none", "--wake-deadline", "2"]))
    assert hub.unaccepted.length == 2.0, "a pushed job's"
    assert hub.jobs.wakes.length == 2.0, "a woken sleeper's"
    for bad in ("0", "61", "soon"):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--wake-deadline", bad])
        assert exit_.value.code == 2
        assert "--wake-deadline" in capsys.readouterr().err


def pushed_and_taken_back(hub: Hub) -> tuple[Wire, WorkerSession, Task[None], bytes, bytes]:
    """A held-grab worker whose pushed job is taken back unread: the worker's wire, its
    session, the client's task, and what the server wrote to it: the push, the revoke."""
    stuck, session = held_worker(hub, "f")
    session.grab()
    stuck.pump()
    client = Wire(hub, ClientSession("mem"))
    task: Task[None] = Task("f", b"x")
    client.session.submit(task)  # type: ignore[union-attr]
    client.pump()
    pushed = stuck.conn.pushed
    assert pushed is not None
    push = stuck.transport.take()
    stuck.conn.not_accepted(pushed)  # what the WAKE_DEADLINE timer does
    hub.flush()
    return stuck, session, task, push, stuck.transport.take()


def test_a_push_read_together_with_its_revoke_is_not_run(hub: Hub) -> None:
    stuck, session, task, push, revoke = pushed_and_taken_back(hub)
    assert [pkt.type for pkt in p.Decoder().feed(revoke)] == [T.JOB_REVOKE]  # type: ignore[union-attr]
    # Stopped past the deadline, it reads both at once: nothing to run, nothing owed.
    assert session.receive(push + revoke) == []
    assert session.state is WorkerState.READY and session.handle is None
    assert session.data_to_send() == b"", "no JOB_ACCEPT for it"
    # It grabs again, as the server expects after a take-back: the job waits at the head
    # of its queue (nobody else here), so the grab gets it at once, to run now.
    session.grab()
    (job,) = stuck.pump()
    assert isinstance(job, JobAssigned) and job.handle == task.handle
    assert session.data_to_send() == b"", "an answer to a grab needs no JOB_ACCEPT"


def test_a_revoke_read_after_its_job_came_is_ignored(hub: Hub) -> None:
    _, session, task, push, revoke = pushed_and_taken_back(hub)
    assert [pkt.type for pkt in p.Decoder().feed(revoke)] == [T.JOB_REVOKE]  # type: ignore[union-attr]
    (job,) = session.receive(push)  # read before the revoke: the job runs here
    assert isinstance(job, JobAssigned) and job.handle == task.handle
    session.data_to_send()
    assert session.receive(revoke) == []
    assert session.state is WorkerState.WORKING and session.handle == task.handle
    session.complete(b"late")  # its answer goes (the server drops it)
    session.grab()
    assert session.receive(revoke) == [], "a revoke for a job no longer in hand"
    assert session.state is WorkerState.GRABBING


def test_a_connection_that_did_not_ask_is_not_told_of_a_take_back(hub: Hub) -> None:
    wire = Wire(hub, ClientSession("mem"))  # a raw worker: only its bytes matter
    wire.conn.data_received(
        p.encode_req(T.OPTION_REQ, p.OPTION_HELD_GRAB)
        + p.encode_req(T.CAN_DO, b"f")
        + p.encode_req(T.GRAB_JOB_UNIQ)
    )
    hub.flush()
    assert wire.transport.take() == p.encode_res(T.OPTION_RES, p.OPTION_HELD_GRAB)
    client = Wire(hub, ClientSession("mem"))
    client.session.submit(Task("f", b"x"))  # type: ignore[union-attr]
    client.pump()
    pushed = wire.conn.pushed
    assert pushed is not None and wire.transport.take()
    wire.conn.not_accepted(pushed)
    hub.flush()
    assert pushed.worker is None, "taken back"
    assert wire.transport.take() == b"", "no JOB_REVOKE: a packet it does not know"


def test_revoke_is_an_option_only_farm_knows() -> None:
    session = WorkerSession({"f": None}, held_grab=True)
    session.connected()
    asked = [pkt.args for pkt in p.Decoder().feed(session.data_to_send())[:4]]  # type: ignore[union-attr]
    assert asked[-1] == (p.OPTION_REVOKE,), "asked with held-grab and read-accept"
    refused = p.encode_res(T.ERROR, b"UNKNOWN_OPTION", b"Server does not recognize given option")
    # farm over TCP: work-exception and held-grab yes, read-accept no; then a server
    # without revoke (an older farm): the held grab goes on, told nothing of take-backs.
    answers = [p.encode_res(T.OPTION_RES, o) for o in (b"work-exception", b"held-grab")]
    assert session.receive(b"".join(answers) + refused + refused) == []
    assert session.held and not session.read_accept
