"""The job server's binary protocol, pinned against a real process.

``any_server`` tests run against farm's server and gearmand 1.1.20: farm must
behave like gearmand there. ``farm_server`` tests pin the rules where farm
deliberately differs (PROTOCOL.md's **farm:** notes; docs/gearmand-probes.md
has what gearmand does instead).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer, sleeping_worker
from tests.helpers.servers import Server, start_farm_server, start_gearmand
from tests.helpers.waiting import wait_for

HANDLE = re.compile(rb"^H:[^\s]+:\d+$")


# -- helpers -------------------------------------------------------------------


def sync(peer: Peer) -> None:
    """Round trip: everything ``peer`` sent before has been processed by the server."""
    peer.send(T.ECHO_REQ, b"sync")
    pkt = peer.expect(T.ECHO_RES)
    assert pkt.args == (b"sync",)


def submit(
    client: Peer, func: str, data: bytes | str = b"", unique: bytes | str = b"", ptype=T.SUBMIT_JOB
) -> bytes:
    client.send(ptype, func, unique, data)
    pkt = client.expect(T.JOB_CREATED)
    assert HANDLE.match(pkt.args[0]), pkt.args
    return pkt.args[0]


def worker(make: Callable[[str], Peer], srv: Server, *funcs: str) -> Peer:
    w = make(srv.addr)
    for f in funcs:
        w.send(T.CAN_DO, f)
    sync(w)
    return w


def grab(w: Peer, ptype=T.GRAB_JOB):
    w.send(ptype)
    return w.recv()


def admin_lines(make: Callable[[str], Peer], srv: Server, cmd: str) -> list[str]:
    a = make(srv.addr)
    text = a.admin(cmd)
    a.close()
    assert text.endswith(".\n"), repr(text)
    return [line for line in text.split("\n")[:-2]]


def status(make, srv: Server) -> dict[str, tuple[int, int, int]]:
    rows = {}
    for line in admin_lines(make, srv, "status"):
        name, total, running, workers = line.split("\t")
        rows[name] = (int(total), int(running), int(workers))
    return rows


def show_jobs(make, srv: Server) -> dict[bytes, tuple[int, int, int]]:
    rows = {}
    for line in admin_lines(make, srv, "show jobs"):
        handle, retries, ignored, persisted = line.split("\t")
        rows[handle.encode()] = (int(retries), int(ignored), int(persisted))
    return rows


def job_gone_or_ignored(make, srv: Server, handle: bytes) -> bool:
    row = show_jobs(make, srv).get(handle)
    return row is None or row[1] == 1


@pytest.fixture(params=["farm", "gearmand"])
def retry2_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server started with ``-j 2`` (job retries), farm's and gearmand."""
    srv = start_farm_server("-j", "2") if request.param == "farm" else start_gearmand("-j", "2")
    yield srv
    srv.stop()


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


# -- WORK_* forwarding ---------------------------------------------------------


def test_work_packets_reach_every_attached_client(any_server, peer_factory):
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c1, "f", b"x", b"k")
    assert submit(c2, "f", b"x", b"k") == h
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_DATA, h, b"d\01")
    w.send(T.WORK_WARNING, h, b"w1")
    w.send(T.WORK_STATUS, h, b"1", b"3")
    w.send(T.WORK_COMPLETE, h, b"done")
    for c in (c1, c2):
        assert c.expect(T.WORK_DATA).args == (h, b"d\01")
        assert c.expect(T.WORK_WARNING).args == (h, b"w1")
        assert c.expect(T.WORK_STATUS).args == (h, b"1", b"3")
        assert c.expect(T.WORK_COMPLETE).args == (h, b"done")


def test_work_fail_reaches_every_client(any_server, peer_factory):
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c1, "f", b"x", b"k")
    submit(c2, "f", b"x", b"k")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_FAIL, h)
    assert c1.expect(T.WORK_FAIL).args == (h,)
    assert c2.expect(T.WORK_FAIL).args == (h,)
    assert grab(w).type == T.NO_JOB, "a failed job is never retried"


def test_work_exception_only_to_clients_with_the_option(any_server, peer_factory):
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    c1.send(T.OPTION_REQ, "exceptions")
    assert c1.expect(T.OPTION_RES).args == (b"exceptions",)
    h = submit(c1, "f", b"x", b"k")
    submit(c2, "f", b"x", b"k")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_EXCEPTION, h, b"boom")
    assert c1.expect(T.WORK_EXCEPTION).args == (h, b"boom")
    fail = c2.expect(T.WORK_FAIL)
    # gearmand 1.1.20 appends a stray NUL to this WORK_FAIL; farm's exact bytes
    # are pinned in test_work_fail_for_exception_is_the_bare_handle.
    assert fail.args[0].rstrip(b"\0") == h
    assert grab(w).type == T.NO_JOB


@pytest.mark.parametrize("name", ["EXCEPTIONS", "Exceptions"])
def test_the_exceptions_option_is_read_in_any_case(any_server, peer_factory, name):
    """gearmand takes the option's name in any case and echoes it as sent."""
    c = peer_factory(any_server.addr)
    c.send(T.OPTION_REQ, name)
    assert c.expect(T.OPTION_RES).args == (name.encode(),)
    h = submit(c, "f", b"x")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_EXCEPTION, h, b"boom")
    assert c.expect(T.WORK_EXCEPTION).args == (h, b"boom")


def test_work_fail_for_exception_is_the_bare_handle(farm_server, peer_factory):
    c = peer_factory(farm_server.addr)
    h = submit(c, "f", b"x")
    w = worker(peer_factory, farm_server, "f")
    grab(w)
    w.send(T.WORK_EXCEPTION, h, b"boom")
    fail = c.expect(T.WORK_FAIL)
    assert fail.args == (h,)


def test_option_req(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    c.send(T.OPTION_REQ, "exceptions")
    assert c.expect(T.OPTION_RES).args == (b"exceptions",)
    c.send(T.OPTION_REQ, "bogus")
    err = c.expect(T.ERROR)
    assert err.args[0] == b"UNKNOWN_OPTION"
    sync(c)


def test_work_for_unheld_handle_is_job_not_found(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"x")
    owner = worker(peer_factory, any_server, "f")
    assert grab(owner).args[0] == h
    thief = worker(peer_factory, any_server, "f")
    for bogus in (h, b"H:nowhere:999"):
        for ptype, args in [
            (T.WORK_STATUS, (bogus, b"1", b"2")),
            (T.WORK_DATA, (bogus, b"d")),
            (T.WORK_WARNING, (bogus, b"w")),
            (T.WORK_COMPLETE, (bogus, b"r")),
            (T.WORK_FAIL, (bogus,)),
            (T.WORK_EXCEPTION, (bogus, b"e")),
        ]:
            thief.send(ptype, *args)
            err = thief.expect(T.ERROR)
            assert err.args[0] == b"JOB_NOT_FOUND", (ptype, bogus, err.args)
    assert c.nothing_within(0.1), "nothing from the thief may reach the client"
    owner.send(T.WORK_COMPLETE, h, b"real")
    assert c.expect(T.WORK_COMPLETE).args == (h, b"real")


# -- status queries ------------------------------------------------------------


def test_get_status(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"x")
    q = peer_factory(any_server.addr)
    q.send(T.GET_STATUS, h)
    assert q.expect(T.STATUS_RES).args == (h, b"1", b"0", b"0", b"0")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_STATUS, h, b"1", b"3")
    c.expect(T.WORK_STATUS)
    q.send(T.GET_STATUS, h)
    assert q.expect(T.STATUS_RES).args == (h, b"1", b"1", b"1", b"3")
    w.send(T.WORK_COMPLETE, h, b"r")
    c.expect(T.WORK_COMPLETE)
    q.send(T.GET_STATUS, h)
    assert q.expect(T.STATUS_RES).args == (h, b"0", b"0", b"0", b"0")
    q.send(T.GET_STATUS, b"H:nowhere:42")
    assert q.expect(T.STATUS_RES).args == (b"H:nowhere:42", b"0", b"0", b"0", b"0")


@pytest.mark.parametrize(
    "sent, kept",
    [
        (b"007", b"7"),
        (b" 3", b"3"),
        (b"+2", b"2"),
        (b"3.5", b"3"),
        (b"5abc", b"5"),
        (b"", b"0"),
        (b"x", b"0"),
        (b"-1", b"4294967295"),
        (b"4294967297", b"1"),
    ],
)
def test_get_status_answers_a_workers_status_as_numbers(any_server, peer_factory, sent, kept):
    """GET_STATUS and GET_STATUS_UNIQUE answer the progress as gearmand does: the numbers
    it read (its (uint32_t)strtoul), not the worker's bytes. farm answered them as sent, so
    a Perl worker's set_status(1.5, 3) reached a client as `1.5`, where python-gearman's
    int() fails; the WORK_STATUS forwarded to the job's clients stays as sent on both."""
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"x", b"progress-key")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_STATUS, h, sent, sent)
    assert c.expect(T.WORK_STATUS).args == (h, sent, sent)
    q = peer_factory(any_server.addr)
    q.send(T.GET_STATUS, h)
    assert q.expect(T.STATUS_RES).args == (h, b"1", b"1", kept, kept)
    q.send(T.GET_STATUS_UNIQUE, b"progress-key")
    assert q.expect(T.STATUS_RES_UNIQUE).args == (b"progress-key", b"1", b"1", kept, kept, b"1")


def test_get_status_unique(any_server, peer_factory):
    c1, c2 = peer_factory(any_server.addr), peer_factory(any_server.addr)
    h = submit(c1, "f", b"x", b"k")
    submit(c2, "f", b"x", b"k")
    submit(c1, "g", b"x", b"bgk", T.SUBMIT_JOB_BG)
    q = peer_factory(any_server.addr)
    q.send(T.GET_STATUS_UNIQUE, "k")
    assert q.expect(T.STATUS_RES_UNIQUE).args == (b"k", b"1", b"0", b"0", b"0", b"2")
    q.send(T.GET_STATUS_UNIQUE, "bgk")
    assert q.expect(T.STATUS_RES_UNIQUE).args == (b"bgk", b"1", b"0", b"0", b"0", b"0")
    q.send(T.GET_STATUS_UNIQUE, "nope")
    assert q.expect(T.STATUS_RES_UNIQUE).args == (b"nope", b"0", b"0", b"0", b"0", b"0")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_STATUS, h, b"2", b"5")
    c1.expect(T.WORK_STATUS)
    q.send(T.GET_STATUS_UNIQUE, "k")
    assert q.expect(T.STATUS_RES_UNIQUE).args == (b"k", b"1", b"1", b"2", b"5", b"2")


def test_echo(any_server, peer_factory):
    c = peer_factory(any_server.addr)
    payload = bytes(range(256)) * 4
    c.send(T.ECHO_REQ, payload)
    assert c.expect(T.ECHO_RES).args == (payload,)
    c.send(T.ECHO_REQ, b"")
    assert c.expect(T.ECHO_RES).args == (b"",)


def test_set_client_id_shown_by_workers(any_server, peer_factory):
    w = peer_factory(any_server.addr)
    w.send(T.SET_CLIENT_ID, "worker-7")
    w.send(T.CAN_DO, "f")
    w.send(T.CAN_DO, "g")
    sync(w)
    lines = admin_lines(peer_factory, any_server, "workers")
    mine = [line for line in lines if " worker-7 " in line]
    assert len(mine) == 1, lines
    assert re.fullmatch(r"\d+ 127\.0\.0\.1 worker-7 : (f g|g f)", mine[0]), mine


# -- sleep and wake ------------------------------------------------------------


def sleeper(make, srv: Server, *funcs: str) -> Peer:
    w = worker(make, srv, *funcs)
    w.send(T.PRE_SLEEP)
    return w


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


@pytest.mark.parametrize("flag", [True, False])
def test_exceptions_flag_sends_work_exception_to_every_client(flag: bool, peer_factory) -> None:
    # gearmand's --exceptions / [server] exceptions: WORK_EXCEPTION reaches clients that did
    # not ask with OPTION_REQ; without it they get WORK_FAIL, as gearmand sends them.
    srv = start_farm_server(*(["--exceptions"] if flag else []))
    try:
        worker, client = peer_factory(srv.addr), peer_factory(srv.addr)
        worker.send(T.CAN_DO, "f")
        client.send(T.SUBMIT_JOB, "f", "", "x")
        handle = client.expect(T.JOB_CREATED).args[0]
        worker.send(T.GRAB_JOB)
        worker.expect(T.JOB_ASSIGN)
        worker.send(T.WORK_EXCEPTION, handle, "ValueError: no")
        if flag:
            assert client.expect(T.WORK_EXCEPTION).args == (handle, b"ValueError: no")
        else:
            assert client.expect(T.WORK_FAIL).args == (handle,)
    finally:
        srv.stop()
