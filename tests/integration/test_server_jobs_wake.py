"""The job server waking workers (PRE_SLEEP, NOOP), and the jobs held or routed apart:
epoch (at a time), reduce, and SUBMIT_JOB_SCHED, which it refuses.

``any_server`` tests run against farm's server and gearmand 1.1.20: farm must
behave like gearmand there. ``farm_server`` tests pin the rules where farm
deliberately differs (docs/gearmand-probes.md's **farm:** notes, beside what
gearmand does instead).
"""

from __future__ import annotations

import time

from farm.protocol import PacketType as T
from tests.helpers.peers import sleeping_worker
from tests.helpers.rawjobs import grab, sleeper, status, submit, sync, worker
from tests.helpers.servers import start_farm_server
from tests.helpers.waiting import wait_for

# -- sleep and wake ------------------------------------------------------------


def test_pre_sleep_then_submit_wakes_with_one_noop(any_server, peer_factory):
    w = sleeper(peer_factory, any_server, "f")
    assert w.nothing_within(0.2), "no NOOP while nothing is runnable"
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"1")
    w.expect(T.NOOP)
    submit(c, "f", b"2")
    assert w.nothing_within(0.2), "at most one NOOP per sleep"
    assert grab(w).args[0] == h


def test_pre_sleep_with_waiting_job_noops_at_once(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    submit(c, "f", b"x")
    w = sleeper(peer_factory, any_server, "f")
    w.expect(T.NOOP, timeout=2)
    w.send(T.PRE_SLEEP)
    w.expect(T.NOOP, timeout=2)


def test_pre_sleep_ignores_other_functions(any_server, peer_factory):
    w = sleeper(peer_factory, any_server, "f")
    c = peer_factory(any_server.addr)
    submit(c, "other", b"x")
    assert w.nothing_within(0.3)


def test_only_as_many_sleepers_woken_as_jobs(peer_factory):
    # farm: no thundering herd (gearmand wakes every sleeper for one job). A woken worker
    # that does not grab within --wake-deadline is passed over and the next sleeper woken,
    # which a test slowed by a loaded machine must not mistake for a herd: 2 s here.
    srv = start_farm_server("--wake-deadline", "2")
    try:
        only_one_woken(srv, peer_factory)
    finally:
        srv.stop()


def only_one_woken(srv, peer_factory):
    sleepers = [sleeping_worker(peer_factory, srv, "f") for _ in range(3)]
    *rest, last = sleepers  # the one that went to sleep last is woken first (the warmest)
    c = peer_factory(srv.addr)
    submit(c, "f", b"one")
    last.expect(T.NOOP)
    assert grab(last).args[2] == b"one"
    for s in rest:
        assert s.nothing_within(0.3), "one job wakes one sleeper"
    submit(c, "f", b"two")
    submit(c, "f", b"three")
    for s in rest:
        s.expect(T.NOOP, timeout=2)


# -- epoch, reduce, sched --------------------------------------------------------


def test_epoch_job_held_until_its_time(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    when = int(time.time()) + 2
    c.send(T.SUBMIT_JOB_EPOCH, "e", "", str(when), "ed")
    he = c.expect(T.JOB_CREATED).args[0]
    assert status(peer_factory, any_server)["e"][:2] == (1, 0)
    w = worker(peer_factory, any_server, "e")
    assert grab(w).type == T.NO_JOB, "an epoch job is not handed out before its time"
    pkt = wait_for(
        "the epoch job to become runnable", lambda: (got := grab(w)).type == T.JOB_ASSIGN and got
    )
    assert time.time() >= when - 0.01
    assert pkt.args == (he, b"e", b"ed")


def test_epoch_in_the_past_runs_at_once(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    c.send(T.SUBMIT_JOB_EPOCH, "e", "", str(int(time.time()) - 10), "past")
    h = c.expect(T.JOB_CREATED).args[0]
    w = worker(peer_factory, any_server, "e")
    assert grab(w).args == (h, b"e", b"past")


def test_epoch_job_wakes_sleeping_worker_at_its_time(farm_server, peer_factory):
    # farm: gearmand 1.1 sends the NOOP at submit time (too early) and never again.
    w = sleeper(peer_factory, farm_server, "e")
    c = peer_factory(farm_server.addr)
    when = int(time.time()) + 2
    c.send(T.SUBMIT_JOB_EPOCH, "e", "", str(when), "ed")
    h = c.expect(T.JOB_CREATED).args[0]
    assert w.nothing_within(max(0.1, when - time.time() - 0.3)), "NOOP before the epoch"
    w.expect(T.NOOP, timeout=5)
    assert time.time() >= when - 0.3
    assert grab(w).args == (h, b"e", b"ed")


def test_reduce_job_assigned_with_reducer(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    c.send(T.SUBMIT_REDUCE_JOB, "m", "", "red", "agg", "rdata")
    h = c.expect(T.JOB_CREATED).args[0]
    w = worker(peer_factory, any_server, "m")
    pkt = grab(w, T.GRAB_JOB_ALL)
    assert (pkt.type, pkt.args) == (T.JOB_ASSIGN_ALL, (h, b"m", b"", b"red", b"rdata"))
    w.send(T.WORK_COMPLETE, h, b"reduced")
    assert c.expect(T.WORK_COMPLETE).args == (h, b"reduced")


def test_reduce_background_and_plain_grab(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    c.send(T.SUBMIT_REDUCE_JOB_BACKGROUND, "m", "", "red", "agg", "bg")
    hb = c.expect(T.JOB_CREATED).args[0]
    c.send(T.SUBMIT_REDUCE_JOB, "m", "", "red", "agg", "fg")
    hf = c.expect(T.JOB_CREATED).args[0]
    w = worker(peer_factory, any_server, "m")
    assert grab(w, T.GRAB_JOB_ALL).args == (hb, b"m", b"", b"red", b"bg")
    pkt = grab(w)
    assert (pkt.type, pkt.args) == (T.JOB_ASSIGN, (hf, b"m", b"fg"))


def test_submit_job_sched_is_rejected(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    c.send(T.SUBMIT_JOB_SCHED, "f", "", "1", "2", "3", "4", "5", "d")
    err = c.expect(T.ERROR)
    assert err.args[0] == b"INVALID_COMMAND"
    sync(c)
    assert status(peer_factory, any_server).get("f", (0, 0, 0)) == (0, 0, 0)
