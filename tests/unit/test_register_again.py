"""A function given up (CANT_DO, or RESET_ABILITIES) while a grab is out and registered
again before the server has read that: its CAN_DO waits for an ECHO_RES (docs/held-grab.md,
give-back).

The server may answer the grab with a job of it, or push one to a held grab, before it reads
the CANT_DO; on reading it, it gives the job back. Sent at once, the CAN_DO made the job
look like one of the function served again: farm's Worker ran it, the server dropped its
answer (given back), and the job ran again elsewhere -- under --job-retries 1 ("at most
once") thousands of payloads ran twice. The ECHO_RES comes after anything the server sent
before it read the CANT_DO: a job of the function before it was given back, and after the
CAN_DO that follows it a job is the worker's."""

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


def a_worker(hub: Hub, *, held: bool, functions: tuple[str, ...] = ("f",)) -> Wire:
    session = WorkerSession(dict.fromkeys(functions), held_grab=held)
    wire = Wire(hub, session)
    session.connected()
    assert wire.pump() == []
    assert session.held is held
    return wire


def session_of(wire: Wire) -> WorkerSession:
    assert isinstance(wire.session, WorkerSession)
    return wire.session


def submitted(hub: Hub, function: str = "f") -> tuple[Wire, Task[None]]:
    client = Wire(hub, ClientSession("mem"))
    task: Task[None] = Task(function, b"x")
    client.session.submit(task)  # type: ignore[union-attr]
    assert client.pump() == [JobCreated(task=task)]
    return client, task


def sent(wire: Wire) -> list[p.Packet]:
    """What the worker session queued, delivered to the server, as packets."""
    out = wire.session.data_to_send()
    wire.conn.data_received(out)
    return p.Decoder(allow_admin=False).feed(out)  # type: ignore[return-value]


def types(packets: list[p.Packet]) -> list[int]:
    return [pkt.type for pkt in packets]


def unregister(worker: WorkerSession) -> None:
    worker.remove_ability("f")  # farm.Worker.unregister("f")


def unregister_all(worker: WorkerSession) -> None:
    worker.reset_abilities()  # farm.Worker.unregister_all() (or a drain), as the Worker does
    worker.abilities = {}


def register_again(worker: WorkerSession) -> None:
    worker.add_ability("f", None)  # farm.Worker.register("f", fn), from another thread


def run_once_more(wire: Wire, client: Wire, task: Task[None]) -> None:
    """The worker grabs again: the job is its own now, and runs once."""
    worker = session_of(wire)
    worker.grab()
    (job,) = wire.pump()
    assert isinstance(job, JobAssigned) and job.handle == task.handle and not job.given_back
    worker.complete(b"ran once")
    wire.pump()
    assert client.pump() == [JobEnded(task=task)] and task.result == b"ran once"


@pytest.mark.parametrize("let_go", [unregister, unregister_all], ids=["cant_do", "reset"])
@pytest.mark.parametrize("how", ["answered", "pushed", "plain"])
def test_a_job_assigned_before_the_echo_is_given_back_and_the_can_do_follows_it(
    hub: Hub, how: str, let_go: Callable[[WorkerSession], None]
) -> None:
    wire = a_worker(hub, held=how != "plain")
    worker = session_of(wire)
    if how == "pushed":  # an idle held grab; the job is pushed before the server reads on
        worker.grab()
        assert sent(wire) and wire.transport.take() == b""
        let_go(worker)
        register_again(worker)
        client, task = submitted(hub)
    else:  # the job waits: the grab is answered at once, before the server reads on
        client, task = submitted(hub)
        worker.grab()
        let_go(worker)
        register_again(worker)
    out = types(sent(wire))
    assert T.CAN_DO not in out, "the CAN_DO waits for the echo"
    assert out[-1] == T.ECHO_REQ

    events = worker.receive(wire.transport.take())  # the job, then the ECHO_RES
    (job,) = [e for e in events if isinstance(e, JobAssigned)]
    assert job.handle == task.handle and job.given_back, "assigned before the echo: given back"
    assert not worker.withdrawn("f"), "registered again by the ECHO_RES in the same read"
    worker.taken_back()  # farm.Worker lets it go, sending nothing for it
    out = types(sent(wire))
    assert T.CAN_DO in out and not {T.WORK_COMPLETE, T.WORK_FAIL} & set(out)

    assert client.pump() == [], "the client is told nothing: the job did not run"
    (queued,) = hub.jobs.jobs.values()
    assert queued.retries == 0 and queued.worker is None and queued.queued
    run_once_more(wire, client, task)
    assert not hub.jobs.poison


def test_the_echo_answered_while_a_held_grab_waits(hub: Hub) -> None:
    wire = a_worker(hub, held=True)
    worker = session_of(wire)
    worker.grab()
    sent(wire)
    unregister(worker)
    register_again(worker)
    assert types(sent(wire)) == [T.CANT_DO, T.ECHO_REQ]
    assert worker.receive(wire.transport.take()) == []
    assert worker.state is WorkerState.GRABBING, "the held grab still waits"
    assert types(sent(wire)) == [T.CAN_DO]
    client, task = submitted(hub)  # pushed to the held grab: the worker's own
    (job,) = worker.receive(wire.transport.take())
    assert isinstance(job, JobAssigned) and job.handle == task.handle and not job.given_back
    worker.complete(b"ran once")
    wire.pump()
    assert client.pump() == [JobEnded(task=task)] and task.result == b"ran once"


def test_the_echo_answered_while_asleep_wakes_the_worker_to_look(hub: Hub) -> None:
    # gearmand wakes a sleeper only for a job submitted later: one that came meanwhile waits
    # for a look, as add_ability looks.
    wire = a_worker(hub, held=False)
    worker = session_of(wire)
    worker.grab()
    unregister(worker)
    register_again(worker)
    assert types(sent(wire)) == [T.GRAB_JOB_UNIQ, T.CANT_DO, T.ECHO_REQ]
    client, task = submitted(hub)  # while the server serves no "f" here
    assert worker.receive(wire.transport.take()) == []  # NO_JOB, then the ECHO_RES
    assert worker.state is WorkerState.READY
    run_once_more(wire, client, task)


def test_the_echo_answered_while_a_job_runs(hub: Hub) -> None:
    wire = a_worker(hub, held=False, functions=("f", "g"))
    worker = session_of(wire)
    other, other_task = submitted(hub, "g")
    worker.grab()
    unregister(worker)
    register_again(worker)
    sent(wire)
    (job,) = worker.receive(wire.transport.take())  # the job of g, then the ECHO_RES
    assert isinstance(job, JobAssigned) and job.function == "g" and not job.given_back
    assert worker.state is WorkerState.WORKING
    assert types(sent(wire)) == [T.CAN_DO], "sent as the echo came, mid-job"
    worker.complete(b"g's")
    wire.pump()
    assert other.pump() == [JobEnded(task=other_task)]
    client, task = submitted(hub)
    run_once_more(wire, client, task)


def test_a_connection_lost_mid_echo_registers_the_function_again(hub: Hub) -> None:
    wire = a_worker(hub, held=True)
    worker = session_of(wire)
    worker.grab()
    unregister(worker)
    register_again(worker)
    worker.data_to_send()  # lost with the connection
    worker.connection_lost()
    worker.connected()
    assert T.CAN_DO in types(p.Decoder(allow_admin=False).feed(worker.data_to_send()))  # type: ignore[arg-type]
    assert not worker.withdrawn("f")


def test_flips_within_one_echo_send_one_can_do_after_it(hub: Hub) -> None:
    wire = a_worker(hub, held=True, functions=("f", "g"))
    worker = session_of(wire)
    worker.grab()
    sent(wire)
    unregister(worker)
    register_again(worker)
    unregister(worker)  # its CAN_DO never left: the server has no "f" to give up
    register_again(worker)
    worker.remove_ability("g")  # after the first echo: the second covers it
    worker.add_ability("g", None)
    out = sent(wire)
    assert types(out) == [T.CANT_DO, T.ECHO_REQ, T.CANT_DO, T.ECHO_REQ]
    assert [pkt.args[0] for pkt in out if pkt.type == T.CANT_DO] == [b"f", b"g"]
    first, second = p.Decoder(allow_admin=False).feed(wire.transport.take())
    assert first.type == second.type == T.ECHO_RES  # type: ignore[union-attr]
    assert worker.receive(p.encode_res(T.ECHO_RES, *first.args)) == []  # type: ignore[union-attr]
    assert types(sent(wire)) == [T.CAN_DO] and worker.withdrawn("g"), "g's CANT_DO came later"
    assert worker.receive(p.encode_res(T.ECHO_RES, *second.args)) == []  # type: ignore[union-attr]
    assert [pkt.args[0] for pkt in sent(wire) if pkt.type == T.CAN_DO] == [b"g"]
    assert not worker.withdrawn("f") and not worker.withdrawn("g")
