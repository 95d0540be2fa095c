"""A command worker that exits 0 with no job counted claims (admin `claim`) only an end it
could have made: one opened while it ran, of a function no other pool serves. Another
connection's jobs (a foreign worker's, another pool's) do not make its crash a recycle."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import farm
from farm.client.admin import admin_query
from farm.pools.claims import CLAIM_SLACK
from farm.protocol import PacketType as T
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


def restarts(up: FarmUp) -> list[str]:
    """The supervisor's log lines of a worker's end and its restart."""
    return [line for line in up.read_log().splitlines() if "; restarting " in line]


def gated(tmp: Path, gate: str) -> str:
    """A command worker that connects nowhere, does no job, and exits 0 once the test
    makes the file ``gate`` (taken away on its way out, for the next one): each process
    marks its start with a file of its own."""
    return (
        f'command = ["sh", "-c", "touch {tmp}/started.$$; while [ ! -e {tmp}/{gate} ];'
        f' do sleep 0.02; done; rm -f {tmp}/{gate}; exit 0"]'
    )


def started(tmp: Path) -> int:
    return len(list(tmp.glob("started.*")))


def farm_of(tmp: Path, functions: str) -> FarmUp:
    up = FarmUp(tmp, functions, metrics=False)
    wait_for("the server", lambda: _answers(up))
    return up


def _answers(up: FarmUp) -> bool:
    try:
        return admin_query(up.addr, "version").startswith("OK")
    except OSError:
        return False


def one_job(up: FarmUp) -> Peer:
    """A TCP worker of `work` (another local user's, say) that ended one job, still open."""
    other = Peer(up.addr)
    other.send(T.CAN_DO, "work")
    with farm.Client(up.addr) as client:
        client.submit("work", "x", background=True)
    other.send(T.GRAB_JOB)
    handle = other.expect(T.JOB_ASSIGN).args[0]
    other.send(T.WORK_COMPLETE, handle, "ok")
    return other


def closed(up: FarmUp, other: Peer) -> None:
    other.close()
    # `work` has no registered worker left: the gated pool's never registers.
    wait_for("its end", lambda: "\nwork\t0\t0\t0\n" in "\n" + admin_query(up.addr, "status"))


def ends(up: FarmUp, count: int) -> list[str]:
    return wait_for(f"{count} ends", lambda: len(restarts(up)) >= count and restarts(up))


POOL = """
    [functions.bad]
    function = "work"
    workers = 1
    """


def test_an_end_opened_before_the_worker_started_is_not_its_own(tmp_path: Path) -> None:
    up = farm_of(tmp_path, POOL + gated(tmp_path, "go"))
    try:
        wait_for("the pool's worker", lambda: started(tmp_path) >= 1)
        other = one_job(up)
        # A claim's window reaches CLAIM_SLACK before the claimant's start (the supervisor
        # notes it after the fork): `other` is opened well before the successor's.
        time.sleep(4 * CLAIM_SLACK)
        before = started(tmp_path)
        (tmp_path / "go").touch()  # the worker that ran as `other` connected ends: a crash
        ends(up, 1)
        wait_for("its successor", lambda: started(tmp_path) > before)
        closed(up, other)  # in the successor's lifetime, but opened before it started
        (tmp_path / "go").touch()
        last = ends(up, 2)[-1]
        # Claimed, it was "recycled (exited with code 0 after 1 jobs)".
        assert "0 jobs" in last and "recycled" not in last, last
    finally:
        up.stop()


def test_an_end_of_a_function_another_pool_serves_is_not_its_own(tmp_path: Path) -> None:
    # Pools may serve the same function: another pool's worker's end (here a raw one's,
    # opened and closed in this worker's lifetime) cannot be told from this pool's.
    other_pool = """
        [functions.also]
        function = "work"
        workers = 1
        """
    up = farm_of(tmp_path, POOL + gated(tmp_path, "go") + other_pool + gated(tmp_path, "never"))
    try:
        wait_for("both pools' workers", lambda: started(tmp_path) >= 2)
        closed(up, one_job(up))
        (tmp_path / "go").touch()
        last = ends(up, 1)[-1]
        assert "bad" in last and "0 jobs" in last and "recycled" not in last, last
    finally:
        up.stop()
