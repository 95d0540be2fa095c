"""The job server's jobs outliving their peers: requeued when a worker lets go, failed
after job retries or a CAN_DO_TIMEOUT, dropped or kept as their clients leave.

``any_server`` tests run against farm's server and gearmand 1.1.20: farm must
behave like gearmand there. ``farm_server`` tests pin the rules where farm
deliberately differs (docs/gearmand-probes.md's **farm:** notes, beside what
gearmand does instead).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from farm.protocol import PacketType as T
from tests.helpers.rawjobs import (
    grab,
    job_gone_or_ignored,
    show_jobs,
    sleeper,
    status,
    submit,
    sync,
    worker,
)
from tests.helpers.servers import Server, start_farm_server, start_gearmand
from tests.helpers.waiting import wait_for


@pytest.fixture(params=["farm", "gearmand"])
def retry2_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server started with ``-j 2`` (job retries), farm's and gearmand."""
    srv = start_farm_server("-j", "2") if request.param == "farm" else start_gearmand("-j", "2")
    yield srv
    srv.stop()


# -- requeue, retries, timeouts ------------------------------------------------


@pytest.mark.parametrize("how", ["disconnect", "cant_do", "reset_abilities"])
def test_job_requeued_when_worker_lets_go(any_server, peer_factory, how):
    c = peer_factory(any_server.addr)
    h = submit(c, "r", b"rd")
    w1 = worker(peer_factory, any_server, "r")
    assert grab(w1).args == (h, b"r", b"rd")
    other = sleeper(peer_factory, any_server, "r")
    assert other.nothing_within(0.1)
    if how == "disconnect":
        w1.close()
    elif how == "cant_do":
        w1.send(T.CANT_DO, "r")
    else:
        w1.send(T.RESET_ABILITIES)
    other.expect(T.NOOP, timeout=5)
    assert grab(other).args == (h, b"r", b"rd")
    assert show_jobs(peer_factory, any_server)[h][0] == 1, "retry count grows"
    if how != "disconnect":
        assert grab(w1).type == T.NO_JOB
        w1.send(T.WORK_COMPLETE, h, b"late")
        assert w1.expect(T.ERROR).args[0] == b"JOB_NOT_FOUND"
    other.send(T.WORK_COMPLETE, h, b"done")
    assert c.expect(T.WORK_COMPLETE).args == (h, b"done")
    assert c.nothing_within(0.1)


def test_a_requeued_job_forgets_the_dead_workers_progress(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "r", b"rd")
    w1 = worker(peer_factory, any_server, "r")
    assert grab(w1).args[0] == h
    w1.send(T.WORK_STATUS, h, b"1", b"4")
    c.expect(T.WORK_STATUS)
    w1.close()  # dies: the job is queued again, and its 1/4 was that worker's
    q = peer_factory(any_server.addr)

    def requeued() -> bool:
        q.send(T.GET_STATUS, h)
        return q.expect(T.STATUS_RES).args[2] == b"0"  # not running

    wait_for("the job requeued", requeued)
    q.send(T.GET_STATUS, h)
    assert q.expect(T.STATUS_RES).args == (h, b"1", b"0", b"0", b"0")


def test_job_retries_exhausted_fails_the_job(retry2_server, peer_factory):
    # -j 2: the job is handed out at most twice; losing it the second time fails it.
    srv = retry2_server
    c = peer_factory(srv.addr)
    h = submit(c, "r", b"rd")
    for _ in range(2):
        w = worker(peer_factory, srv, "r")
        pkt = grab(w)
        assert pkt.args == (h, b"r", b"rd"), pkt
        w.close()
        # The next worker must not grab before the server has seen this one go (gearmand
        # handles the close on its own thread, after a grab that may already be in flight).
        wait_for(
            "the server to take the job back",
            lambda: status(peer_factory, srv).get("r", (0, 0, 0))[1:] == (0, 0),
        )
    assert c.expect(T.WORK_FAIL, timeout=5).args == (h,)
    w = worker(peer_factory, srv, "r")
    assert grab(w).type == T.NO_JOB
    assert status(peer_factory, srv).get("r", (0, 0, 1))[:2] == (0, 0)


def test_job_retries_count_cant_do_too(retry2_server, peer_factory):
    # A job its worker gives back with CANT_DO counts a retry in both servers, and the
    # WORK_FAIL that worker sends after it is about no job of its: it counts no more.
    srv = retry2_server
    c = peer_factory(srv.addr)
    h = submit(c, "r", b"rd")
    w = worker(peer_factory, srv, "r")
    for tries in (1, 2):
        assert grab(w).args[0] == h
        w.send(T.CANT_DO, "r")
        w.send(T.WORK_FAIL, h)
        assert w.expect(T.ERROR).args[0] == b"JOB_NOT_FOUND"
        if tries == 1:
            assert show_jobs(peer_factory, srv)[h][0] == 1, "queued again, one retry counted"
            assert c.nothing_within(0.1), "the late WORK_FAIL ended the job"
        w.send(T.CAN_DO, "r")
    assert c.expect(T.WORK_FAIL, timeout=5).args == (h,)
    assert grab(w).type == T.NO_JOB


@pytest.mark.parametrize("timeout", ["1", "1200", "1.9"])
def test_can_do_timeout_fails_the_job(farm_server, peer_factory, timeout):
    # farm: expiry fails the job (gearmand 1.1 silently requeues it). Values
    # >= 1000 are milliseconds (libgearman >= 1.1.19 sends ms); a fraction is dropped (atoi).
    c = peer_factory(farm_server.addr)
    w = peer_factory(farm_server.addr)
    w.send(T.CAN_DO_TIMEOUT, "t", timeout)
    sync(w)
    h = submit(c, "t", b"td")
    t0 = time.monotonic()  # before the grab, so a slow reply cannot shorten what we measure
    assert grab(w).args == (h, b"t", b"td")
    assert c.expect(T.WORK_FAIL, timeout=5).args == (h,)
    assert time.monotonic() - t0 >= 0.9, "failed before its timeout"
    assert grab(w).type == T.NO_JOB, "a timed-out job is not handed out again"
    w2 = worker(peer_factory, farm_server, "t")
    assert grab(w2).type == T.NO_JOB


def test_can_do_timeout_not_hit_when_work_completes(farm_server, peer_factory):
    c = peer_factory(farm_server.addr)
    w = peer_factory(farm_server.addr)
    w.send(T.CAN_DO_TIMEOUT, "t", "1")
    sync(w)
    h = submit(c, "t", b"td")
    grab(w)
    w.send(T.WORK_COMPLETE, h, b"quick")
    assert c.expect(T.WORK_COMPLETE).args == (h, b"quick")
    assert c.nothing_within(1.5), "no WORK_FAIL after the job completed"


# -- clients leaving -----------------------------------------------------------


def test_last_foreground_client_leaving_drops_queued_job(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "q", b"qd")
    c.close()
    wait_for("the job dropped", lambda: job_gone_or_ignored(peer_factory, any_server, h))
    w = worker(peer_factory, any_server, "q")
    assert grab(w).type == T.NO_JOB


def test_queued_job_dropped_from_status(farm_server, peer_factory):
    # farm drops the job at once; gearmand keeps counting it until a grab skips it.
    c = peer_factory(farm_server.addr)
    submit(c, "q", b"qd")
    assert status(peer_factory, farm_server)["q"][0] == 1
    c.close()
    wait_for("status total 0", lambda: status(peer_factory, farm_server).get("q", (0,))[0] == 0)
    assert show_jobs(peer_factory, farm_server) == {}


def test_one_of_two_clients_leaving_keeps_the_job(any_server, peer_factory):
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c1, "q", b"qd", b"k")
    submit(c2, "q", b"qd", b"k")
    c1.close()
    q = peer_factory(any_server.addr)

    def one_client() -> bool:
        q.send(T.GET_STATUS_UNIQUE, "k")
        return q.expect(T.STATUS_RES_UNIQUE).args[5] == b"1"

    wait_for("the first client detached", one_client)
    w = worker(peer_factory, any_server, "q")
    assert grab(w).args[0] == h
    w.send(T.WORK_COMPLETE, h, b"r")
    assert c2.expect(T.WORK_COMPLETE).args == (h, b"r")


def test_running_job_finishes_after_client_left(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "q", b"qd")
    w = worker(peer_factory, any_server, "q")
    assert grab(w).args[0] == h
    c.close()
    w.send(T.WORK_STATUS, h, b"1", b"2")
    w.send(T.WORK_COMPLETE, h, b"discarded")
    sync(w)  # no ERROR came before the ECHO_RES
    wait_for("the job finished", lambda: status(peer_factory, any_server)["q"][:2] == (0, 0))


@pytest.mark.parametrize("bg_first", [True, False])
def test_background_job_not_cancelled_by_joined_foreground_client(
    farm_server, peer_factory, bg_first
):
    # farm: gearmand drops the background job when the foreground client that
    # joined it (or that it joined) leaves.
    bgc, fgc = peer_factory(farm_server.addr), peer_factory(farm_server.addr)
    if bg_first:
        h = submit(bgc, "b", b"bd", b"k", T.SUBMIT_JOB_BG)
        assert submit(fgc, "b", b"x", b"k") == h
    else:
        h = submit(fgc, "b", b"bd", b"k")
        assert submit(bgc, "b", b"x", b"k", T.SUBMIT_JOB_BG) == h
    fgc.close()
    # wait until the server has processed the close: the job has no client left
    q = peer_factory(farm_server.addr)

    def no_clients() -> bool:
        q.send(T.GET_STATUS_UNIQUE, "k")
        return q.expect(T.STATUS_RES_UNIQUE).args[5] == b"0"

    wait_for("the foreground client detached", no_clients)
    w = worker(peer_factory, farm_server, "b")
    pkt = grab(w)
    assert pkt.type == T.JOB_ASSIGN, "the background job was dropped"
    assert pkt.args[0] == h
