"""A worker's deadlines run from when its job is sent, not from when it is assigned: on a
connection that also submits background jobs, an assignment waits behind the JOB_CREATED
held for the store's commit (farm.server.storewriter), and a commit slower than the
deadline failed or took back a job the worker had not been sent, which it then ran anyway
once it left.
"""

from __future__ import annotations

from pathlib import Path

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.storegate import gated_server


def test_a_push_held_behind_a_commit_is_not_taken_back_before_it_leaves(tmp_path: Path) -> None:
    """A worker holding a grab on the connection it submits background jobs on: the job
    pushed to it waits behind the held JOB_CREATED. Its --wake-deadline ran from the push,
    so a commit slower than it took the job back for another worker, and this one ran it
    too once it left. The deadline starts once the assignment has left."""
    with gated_server(tmp_path, "--wake-deadline", "0.2") as (addr, gate, _):
        other = Peer(addr)
        other.send(T.CAN_DO, "f")
        other.send(T.PRE_SLEEP)
        other.send(T.ECHO_REQ, "asleep")
        other.expect(T.ECHO_RES)
        worker = Peer(addr)  # asleep last: the job is pushed to it
        worker.send(T.OPTION_REQ, "held-grab")
        worker.expect(T.OPTION_RES)
        worker.send(T.CAN_DO, "f")
        worker.send(T.GRAB_JOB_UNIQ)
        worker.send(T.SUBMIT_JOB_BG, "bg", "", "x")
        gate.wait_entered()  # its JOB_CREATED is held, and the commit does not end
        client = Peer(addr)
        client.send(T.SUBMIT_JOB, "f", "", "x")
        handle = client.expect(T.JOB_CREATED).args[0]
        assert other.nothing_within(1.0), "taken back from a worker it was never sent to"
        gate.let_one_go()
        worker.expect(T.JOB_CREATED)
        worker.expect(T.NOOP)
        assert worker.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
        # Not accepted once sent: past the deadline it goes to another worker, as ever.
        other.expect(T.NOOP)
        other.send(T.GRAB_JOB_UNIQ)
        assert other.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle


def test_a_timeout_runs_from_when_the_assignment_leaves(tmp_path: Path) -> None:
    """CAN_DO_TIMEOUT 1 s, and a commit held for longer: the client was told WORK_FAIL
    before the worker had been sent the job, and the worker was sent it afterwards."""
    with gated_server(tmp_path) as (addr, gate, _):
        client = Peer(addr)
        client.send(T.SUBMIT_JOB, "f", "", "x")
        handle = client.expect(T.JOB_CREATED).args[0]
        worker = Peer(addr)
        worker.send(T.CAN_DO_TIMEOUT, "f", "1")
        worker.send(T.SUBMIT_JOB_BG, "bg", "", "x")
        gate.wait_entered()  # its JOB_CREATED is held, and the commit does not end
        worker.send(T.GRAB_JOB)  # the assignment waits behind it
        assert client.nothing_within(1.5), "the job timed out before it was sent"
        gate.let_one_go()
        worker.expect(T.JOB_CREATED)
        assert worker.expect(T.JOB_ASSIGN).args[0] == handle
        # Its second starts now: not answered within it, the job fails, as ever.
        assert client.expect(T.WORK_FAIL).args[0] == handle
