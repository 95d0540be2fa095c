"""The job server's binary protocol, pinned against a real process: submit, grab and
complete, priorities, and unique-key coalescing.

``any_server`` tests run against farm's server and gearmand 1.1.20: farm must
behave like gearmand there. ``farm_server`` tests pin the rules where farm
deliberately differs (docs/gearmand-probes.md's **farm:** notes, beside what
gearmand does instead). The same holds in test_server_jobs_work.py (WORK_*
packets, status queries), test_server_jobs_wake.py (sleep and wake, epoch, reduce, sched)
and test_server_jobs_requeue.py (requeue, retries, timeouts, clients leaving).
"""

from __future__ import annotations

from farm.protocol import PacketType as T
from tests.helpers.rawjobs import admin_lines, grab, show_jobs, status, submit, sync, worker
from tests.helpers.waiting import wait_for

# -- submit, grab, complete ----------------------------------------------------


def test_submit_grab_complete(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"da\0ta", b"u1")
    w = worker(peer_factory, any_server, "f")
    pkt = grab(w)
    assert (pkt.type, pkt.args) == (T.JOB_ASSIGN, (h, b"f", b"da\0ta"))
    assert grab(w).type == T.NO_JOB
    w.send(T.WORK_COMPLETE, h, b"res\0ult")
    done = c.expect(T.WORK_COMPLETE)
    assert done.args == (h, b"res\0ult")
    assert grab(w).type == T.NO_JOB


def test_handles_are_distinct(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    handles = {submit(c, "f", b"x"), submit(c, "f", b"x"), submit(c, "g", b"x")}
    assert len(handles) == 3


def test_no_job_for_another_function(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    submit(c, "other", b"x")
    w = worker(peer_factory, any_server, "f")
    assert grab(w).type == T.NO_JOB
    assert grab(w, T.GRAB_JOB_UNIQ).type == T.NO_JOB
    assert grab(w, T.GRAB_JOB_ALL).type == T.NO_JOB


def test_grab_job_uniq(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h1 = submit(c, "f", b"d1", b"key-1")
    h2 = submit(c, "f", b"d2", b"")
    w = worker(peer_factory, any_server, "f")
    pkt = grab(w, T.GRAB_JOB_UNIQ)
    assert (pkt.type, pkt.args) == (T.JOB_ASSIGN_UNIQ, (h1, b"f", b"key-1", b"d1"))
    pkt = grab(w, T.GRAB_JOB_UNIQ)
    assert (pkt.type, pkt.args) == (T.JOB_ASSIGN_UNIQ, (h2, b"f", b"", b"d2"))
    assert grab(w, T.GRAB_JOB_UNIQ).type == T.NO_JOB


def test_grab_job_all_on_plain_job_gives_assign_uniq(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"plain", b"uu")
    w = worker(peer_factory, any_server, "f")
    pkt = grab(w, T.GRAB_JOB_ALL)
    assert (pkt.type, pkt.args) == (T.JOB_ASSIGN_UNIQ, (h, b"f", b"uu", b"plain"))


def test_background_job(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"bg", ptype=T.SUBMIT_JOB_BG)
    assert status(peer_factory, any_server)["f"] == (1, 0, 0)
    w = worker(peer_factory, any_server, "f")
    pkt = grab(w)
    assert pkt.args == (h, b"f", b"bg")
    assert status(peer_factory, any_server)["f"] == (1, 1, 1)
    w.send(T.WORK_STATUS, h, b"1", b"2")
    w.send(T.WORK_COMPLETE, h, b"done")
    sync(w)
    assert c.nothing_within(0.2), "a background submitter gets no WORK_* packets"
    assert status(peer_factory, any_server)["f"] == (0, 0, 1)


def test_background_job_survives_submitter_disconnect(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"bg", ptype=T.SUBMIT_JOB_BG)
    c.close()
    w = worker(peer_factory, any_server, "f")
    # the close is processed asynchronously; the job must stay regardless
    wait_for("the job row", lambda: h in show_jobs(peer_factory, any_server))
    assert grab(w).args == (h, b"f", b"bg")


# -- priorities ----------------------------------------------------------------


def test_priority_order_within_a_function(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    for ptype, data in [
        (T.SUBMIT_JOB_LOW, "l1"),
        (T.SUBMIT_JOB, "n1"),
        (T.SUBMIT_JOB_HIGH, "h1"),
        (T.SUBMIT_JOB_LOW_BG, "l2"),
        (T.SUBMIT_JOB_BG, "n2"),
        (T.SUBMIT_JOB_HIGH_BG, "h2"),
        (T.SUBMIT_JOB_HIGH, "h3"),
    ]:
        submit(c, "f", data, ptype=ptype)
    lines = admin_lines(peer_factory, any_server, "prioritystatus")
    assert lines == ["f\t3\t2\t2\t0"]
    w = worker(peer_factory, any_server, "f")
    got = [grab(w).args[2] for _ in range(7)]
    assert got == [b"h1", b"h2", b"h3", b"n1", b"n2", b"l1", b"l2"]
    assert grab(w).type == T.NO_JOB


def test_priority_is_global_across_functions(farm_server, peer_factory):
    # farm: priority spans all the worker's functions (gearmand 1.1 drains one
    # function at a time and handed out g's LOW before f's HIGH).
    c = peer_factory(farm_server.addr)
    for func, ptype, data in [
        ("f", T.SUBMIT_JOB_LOW, "l1"),
        ("g", T.SUBMIT_JOB, "n1"),
        ("g", T.SUBMIT_JOB_LOW, "l2"),
        ("f", T.SUBMIT_JOB_HIGH, "h1"),
        ("f", T.SUBMIT_JOB, "n2"),
        ("g", T.SUBMIT_JOB_HIGH_BG, "h2"),
    ]:
        submit(c, func, data, ptype=ptype)
    w = worker(peer_factory, farm_server, "g", "f")
    got = [grab(w).args[1:] for _ in range(6)]
    assert got == [
        (b"f", b"h1"),
        (b"g", b"h2"),
        (b"g", b"n1"),
        (b"f", b"n2"),
        (b"f", b"l1"),
        (b"g", b"l2"),
    ]


# -- unique-key coalescing -----------------------------------------------------


def test_coalesce_queued_job_first_payload_wins(any_server, peer_factory):
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c1, "f", b"one", b"k")
    assert submit(c2, "f", b"two", b"k") == h
    assert submit(c2, "f", b"three", b"k", T.SUBMIT_JOB_HIGH) == h
    assert submit(c2, "f", b"four", b"k", T.SUBMIT_JOB_BG) == h
    assert status(peer_factory, any_server)["f"] == (1, 0, 0)
    w = worker(peer_factory, any_server, "f")
    pkt = grab(w, T.GRAB_JOB_UNIQ)
    assert pkt.args == (h, b"f", b"k", b"one")
    assert grab(w).type == T.NO_JOB
    w.send(T.WORK_COMPLETE, h, b"R")
    assert c1.expect(T.WORK_COMPLETE).args == (h, b"R")
    # c2 joined twice in the foreground: it hears the result once for each (as gearmand)
    assert c2.expect(T.WORK_COMPLETE).args == (h, b"R")
    assert c2.expect(T.WORK_COMPLETE).args == (h, b"R")


def test_one_connection_joining_twice_hears_every_packet_twice(any_server, peer_factory):
    """A client's two tasks with one unique share a handle; libgearman and Perl's task
    sets match one packet to one task, so each packet comes once per submit."""
    c, q = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c, "f", b"x", b"twice")
    assert submit(c, "f", b"x", b"twice") == h
    q.send(T.GET_STATUS_UNIQUE, "twice")
    assert q.expect(T.STATUS_RES_UNIQUE).args[-1] == b"2"  # client_count
    w = worker(peer_factory, any_server, "f")
    assert grab(w).args[0] == h
    w.send(T.WORK_DATA, h, b"d")
    w.send(T.WORK_STATUS, h, b"1", b"2")
    w.send(T.WORK_COMPLETE, h, b"R")
    got = [c.recv() for _ in range(6)]
    assert [(p.type, p.args) for p in got] == [
        (T.WORK_DATA, (h, b"d")),
        (T.WORK_DATA, (h, b"d")),
        (T.WORK_STATUS, (h, b"1", b"2")),
        (T.WORK_STATUS, (h, b"1", b"2")),
        (T.WORK_COMPLETE, (h, b"R")),
        (T.WORK_COMPLETE, (h, b"R")),
    ]


def test_coalesce_running_job(any_server, peer_factory):
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c1, "f", b"one", b"k")
    w = worker(peer_factory, any_server, "f")
    assert grab(w).args[0] == h
    assert submit(c2, "f", b"late", b"k") == h
    assert grab(w).type == T.NO_JOB, "joining a running job must not queue a new one"
    w.send(T.WORK_COMPLETE, h, b"R")
    assert c1.expect(T.WORK_COMPLETE).args == (h, b"R")
    assert c2.expect(T.WORK_COMPLETE).args == (h, b"R")


def test_same_unique_other_function_does_not_coalesce(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    assert submit(c, "f", b"x", b"k") != submit(c, "g", b"x", b"k")


def test_empty_unique_never_coalesces(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h1 = submit(c, "f", b"same", b"")
    h2 = submit(c, "f", b"same", b"")
    assert h1 != h2
    assert status(peer_factory, any_server)["f"] == (2, 0, 0)


def test_completed_unique_is_free_again(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h1 = submit(c, "f", b"x", b"k")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_COMPLETE, h1, b"r")
    c.expect(T.WORK_COMPLETE)
    h2 = submit(c, "f", b"x", b"k")
    assert h2 != h1
    assert grab(w).args == (h2, b"f", b"x")


def test_dash_unique_means_payload(any_server, peer_factory):
    # gearmand: two "-" submits with the same non-empty payload coalesce; the
    # worker still sees "-" as the unique.
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c1, "f", b"payload", b"-")
    assert submit(c2, "f", b"payload", b"-") == h
    other = submit(c2, "f", b"other", b"-")
    assert other != h
    w = worker(peer_factory, any_server, "f")
    assert grab(w, T.GRAB_JOB_UNIQ).args == (h, b"f", b"-", b"payload")
    assert grab(w, T.GRAB_JOB_UNIQ).args == (other, b"f", b"-", b"other")
    assert grab(w).type == T.NO_JOB
    w.send(T.WORK_COMPLETE, h, b"R")
    assert c1.expect(T.WORK_COMPLETE).args == (h, b"R")
    assert c2.expect(T.WORK_COMPLETE).args == (h, b"R")


def test_dash_unique_with_empty_payload_never_coalesces(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    assert submit(c, "f", b"", b"-") != submit(c, "f", b"", b"-")


def test_dash_unique_does_not_match_literal_unique(any_server, peer_factory):
    # gearmand keeps "-" as the job's unique: a job whose literal unique equals
    # the payload is a different job.
    c = peer_factory(any_server.addr)
    assert submit(c, "f", b"payload", b"-") != submit(c, "f", b"x", b"payload")
