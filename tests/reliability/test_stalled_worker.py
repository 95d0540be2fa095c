"""A woken worker that does not come for its job (stopped, hung, swapping) does not stall it.

The server wakes one sleeping worker per runnable job, not all of them (no
herd); if the woken one has not grabbed within a short deadline, it wakes
another. gearmand wakes every sleeper, so it never stalls here, but pays for it
with a herd on every job.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer, sleeping_worker
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

#: The server's --wake-deadline here: long enough that a test slowed by a loaded machine
#: still answers in time what it must answer in time (the default is 0.5 s).
DEADLINE = 1.5


@pytest.fixture
def slow_deadline_server() -> Iterator[Server]:
    srv = start_farm_server("--wake-deadline", str(DEADLINE))
    yield srv
    srv.stop()


def test_another_sleeper_is_woken_when_the_first_does_not_come(
    slow_deadline_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    srv = slow_deadline_server
    healthy = sleeping_worker(peer_factory, srv, "f")
    stalled = sleeping_worker(peer_factory, srv, "f")  # asleep last: woken first
    client = peer_factory(srv.addr)
    began = time.monotonic()  # before the submit: the deadline may start before we look
    client.send(T.SUBMIT_JOB, "f", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    stalled.expect(T.NOOP)  # the last sleeper is woken first ...
    assert healthy.nothing_within(0.3), "... and only it, at first: no herd"
    healthy.expect(T.NOOP, timeout=10)  # ... then, as it does not come, the other
    assert time.monotonic() - began >= DEADLINE - 0.01, "not before --wake-deadline"
    healthy.send(T.GRAB_JOB_UNIQ)
    assert healthy.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    healthy.send(T.WORK_COMPLETE, handle, "done")
    assert client.expect(T.WORK_COMPLETE).args == (handle, b"done")
    # The stalled one, back to life, finds nothing left and sleeps again.
    stalled.send(T.GRAB_JOB_UNIQ)
    assert stalled.expect(T.NO_JOB).type == T.NO_JOB


def test_a_woken_worker_that_grabs_in_time_is_not_doubled(
    slow_deadline_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    second = sleeping_worker(peer_factory, slow_deadline_server, "g")
    first = sleeping_worker(peer_factory, slow_deadline_server, "g")  # asleep last: woken first
    client = peer_factory(slow_deadline_server.addr)
    client.send(T.SUBMIT_JOB, "g", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    first.expect(T.NOOP)
    first.send(T.GRAB_JOB_UNIQ)
    assert first.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    assert second.nothing_within(DEADLINE + 1), "the second sleeper is left asleep"


def test_farm_ps_shows_a_stopped_worker_as_stopped(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        (row,) = up.wait_idle({"reverse": 1})
        os.kill(row["pid"], signal.SIGSTOP)
        try:
            wait_for("ps to say stopped", lambda: _state(up, row["pid"]) == "stopped")
        finally:
            os.kill(row["pid"], signal.SIGCONT)
        wait_for("ps to say idle again", lambda: _state(up, row["pid"]) == "idle")
    finally:
        assert up.stop() == 0


def test_a_sleeper_late_for_its_wake_up_is_not_woken_first_again(
    slow_deadline_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # The newest sleeper is woken first; one that comes only past the deadline, finds
    # nothing and sleeps again is the newest, and was woken first for every job.
    srv = slow_deadline_server
    healthy = sleeping_worker(peer_factory, srv, "l")
    late = sleeping_worker(peer_factory, srv, "l")  # asleep last: woken first
    client = peer_factory(srv.addr)
    client.send(T.SUBMIT_JOB, "l", "", "1")
    client.expect(T.JOB_CREATED)
    late.expect(T.NOOP)
    healthy.expect(T.NOOP, timeout=10)  # past the deadline
    healthy.send(T.GRAB_JOB)
    handle = healthy.expect(T.JOB_ASSIGN).args[0]
    healthy.send(T.WORK_COMPLETE, handle, "done")
    client.expect(T.WORK_COMPLETE)
    healthy.send(T.PRE_SLEEP)
    late.send(T.GRAB_JOB)  # it comes at last: nothing left, and it sleeps again
    late.expect(T.NO_JOB)
    late.send(T.PRE_SLEEP)
    for peer in (healthy, late):
        peer.send(T.ECHO_REQ, "asleep")
        peer.expect(T.ECHO_RES)
    began = time.monotonic()
    client.send(T.SUBMIT_JOB, "l", "", "2")
    client.expect(T.JOB_CREATED)
    healthy.expect(T.NOOP, timeout=10)
    assert time.monotonic() - began < DEADLINE - 0.3, "the job waited for the late worker"
    assert late.nothing_within(0.3), "the late worker is woken last"


def test_a_woken_worker_that_disconnects_passes_its_wake_up_on(
    slow_deadline_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    srv = slow_deadline_server
    other = sleeping_worker(peer_factory, srv, "d")
    gone = sleeping_worker(peer_factory, srv, "d")  # asleep last: woken first
    client = peer_factory(srv.addr)
    client.send(T.SUBMIT_JOB, "d", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    gone.expect(T.NOOP)
    gone.close()  # before it grabs: its deadline went with it, and no sleeper was woken
    other.expect(T.NOOP, timeout=10)
    other.send(T.GRAB_JOB)
    assert other.expect(T.JOB_ASSIGN).args[0] == handle


def _state(up: FarmUp, pid: int) -> str:
    return next(r["state"] for r in up.ps() if r["pid"] == pid)


def test_a_job_pushed_to_a_held_grab_and_not_accepted_goes_to_another_worker(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    healthy = sleeping_worker(peer_factory, farm_server, "h")
    stalled = peer_factory(farm_server.addr)
    stalled.send(T.OPTION_REQ, "held-grab")
    assert stalled.expect(T.OPTION_RES).args == (b"held-grab",)
    stalled.send(T.CAN_DO, "h")
    stalled.send(T.GRAB_JOB_UNIQ)  # held: no NO_JOB; asleep last, so it is woken first
    stalled.send(T.ECHO_REQ, "holding")
    assert stalled.expect(T.ECHO_RES).args == (b"holding",)
    client = peer_factory(farm_server.addr)
    client.send(T.SUBMIT_JOB, "h", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    stalled.expect(T.NOOP)
    assert stalled.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle, "pushed to the held grab"
    # It never accepts: after the deadline the job is taken back and the sleeper woken.
    healthy.expect(T.NOOP, timeout=5)
    healthy.send(T.GRAB_JOB_UNIQ)
    assert healthy.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    healthy.send(T.WORK_COMPLETE, handle, "done")
    assert client.expect(T.WORK_COMPLETE).args == (handle, b"done")
    # Back to life, the stalled one's answer is dropped: no ERROR, no second result.
    stalled.send(T.JOB_ACCEPT, handle)
    stalled.send(T.WORK_COMPLETE, handle, "late")
    stalled.send(T.ECHO_REQ, "alive")
    assert stalled.expect(T.ECHO_RES).args == (b"alive",)
    assert client.nothing_within(0.2)


@pytest.mark.parametrize(
    "answer", [(T.WORK_COMPLETE,), (T.WORK_EXCEPTION, T.WORK_FAIL)], ids=["complete", "perl"]
)
def test_a_worker_late_twice_for_one_job_has_both_late_answers_dropped(
    farm_server: Server, peer_factory: Callable[[str], Peer], answer: tuple[T, ...]
) -> None:
    """Pushed to the same held grab twice and taken back twice (it went to another worker,
    which died holding it), the job was read twice and run twice by the late worker: each
    answer is dropped without an ERROR (docs/held-grab.md). The second one got ERROR
    JOB_NOT_FOUND while a take-back was remembered once per handle. Perl's answer to a job
    that died is a pair, WORK_EXCEPTION then WORK_FAIL: the first run's WORK_FAIL took the
    second run's place, whose WORK_EXCEPTION then got the ERROR Perl dies on."""

    def running(admin: Peer) -> str:
        rows = [line.split("\t") for line in admin.admin("status").splitlines()]
        return next((row[2] for row in rows if row[0] == "twice"), "")

    late = peer_factory(farm_server.addr)
    late.send(T.OPTION_REQ, "held-grab")
    assert late.expect(T.OPTION_RES).args == (b"held-grab",)
    late.send(T.CAN_DO, "twice")
    late.send(T.GRAB_JOB)
    late.send(T.ECHO_REQ, "holding")
    assert late.expect(T.ECHO_RES).args == (b"holding",)
    client = peer_factory(farm_server.addr)
    client.send(T.SUBMIT_JOB, "twice", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    admin = peer_factory(farm_server.addr)
    # Not read: taken back at the deadline, queued with no one to run it.
    wait_for("the first take-back", lambda: running(admin) == "0")
    other = peer_factory(farm_server.addr)
    other.send(T.CAN_DO, "twice")
    other.send(T.GRAB_JOB)
    assert other.expect(T.JOB_ASSIGN).args[0] == handle
    late.expect(T.NOOP)  # read late: it runs the job, and grabs again (held)
    assert late.expect(T.JOB_ASSIGN).args[0] == handle
    late.send(T.JOB_ACCEPT, handle)
    late.send(T.GRAB_JOB)
    late.send(T.ECHO_REQ, "holding again")
    assert late.expect(T.ECHO_RES).args == (b"holding again",)
    other.close()  # dies holding it: the job is pushed to the held grab again, not accepted
    # Read before the wait: between the requeue and the push `status` says 0 running too,
    # and a wait that ended there let the JOB_ACCEPT below come in time (a run, not late).
    late.expect(T.NOOP)
    assert late.expect(T.JOB_ASSIGN).args[0] == handle
    wait_for("the second take-back", lambda: running(admin) == "0")
    late.send(T.JOB_ACCEPT, handle)
    for run in ("first", "second"):
        for ptype in answer:
            late.send(ptype, handle, *([] if ptype == T.WORK_FAIL else ["late"]))
        late.send(T.ECHO_REQ, run)
        pkt = late.recv()
        assert (pkt.type, pkt.args) == (T.ECHO_RES, (run.encode(),)), f"{run} late answer"
    assert client.nothing_within(0.2), "no late answer reaches the client"
