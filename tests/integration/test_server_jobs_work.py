"""The job server's WORK_* forwarding (data, warnings, status, fail, exceptions and the
options that choose them) and its status queries (GET_STATUS, ECHO, SET_CLIENT_ID).

``any_server`` tests run against farm's server and gearmand 1.1.20: farm must
behave like gearmand there. ``farm_server`` tests pin the rules where farm
deliberately differs (docs/gearmand-probes.md's **farm:** notes, beside what
gearmand does instead).
"""

from __future__ import annotations

import re

import pytest

from farm.protocol import PacketType as T
from tests.helpers.rawjobs import admin_lines, grab, submit, sync, worker
from tests.helpers.servers import start_farm_server

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
    "numerator, denominator, kept",
    [
        (b"007", b"007", (b"7", b"7")),
        (b" 3", b" 3", (b"3", b"3")),
        (b"+2", b"+2", (b"2", b"2")),
        (b"3.5", b"3.5", (b"3", b"3")),
        (b"5abc", b"5abc", (b"5", b"5")),
        (b"", b"", (b"0", b"0")),
        (b"x", b"x", (b"0", b"0")),
        (b"-1", b"-1", (b"4294967295", b"4294967295")),
        (b"4294967297", b"4294967297", (b"1", b"1")),
        # gearmand's numerator is (uint32_t)atoi: strtol clamps to a 64-bit long first
        (b"9223372036854775808", b"1", (b"4294967295", b"1")),
        (b"-18446744073709551615", b"1", (b"0", b"1")),
        (b"-2147483649", b"1", (b"2147483647", b"1")),
        # its denominator goes through char[11] first: 11 bytes fit, cut to 10
        (b"1", b"12345678901", (b"1", b"1234567890")),
        (b"1", b"99999999999", (b"1", b"1410065407")),
    ],
)
def test_get_status_answers_a_workers_status_as_numbers(
    any_server, peer_factory, numerator, denominator, kept
):
    """GET_STATUS and GET_STATUS_UNIQUE answer the progress as gearmand does: the numbers
    it read, not the worker's bytes. farm answered them as sent, so a Perl worker's
    set_status(1.5, 3) reached a client as `1.5`, where python-gearman's int() fails; then
    it read both as (uint32_t)strtoul, where gearmand's numerator is (uint32_t)atoi and its
    denominator is cut to 10 bytes. The WORK_STATUS forwarded to the job's clients stays as
    sent on both."""
    c = peer_factory(any_server.addr)
    h = submit(c, "f", b"x", b"progress-key")
    w = worker(peer_factory, any_server, "f")
    grab(w)
    w.send(T.WORK_STATUS, h, numerator, denominator)
    assert c.expect(T.WORK_STATUS).args == (h, numerator, denominator)
    q = peer_factory(any_server.addr)
    q.send(T.GET_STATUS, h)
    assert q.expect(T.STATUS_RES).args == (h, b"1", b"1", *kept)
    q.send(T.GET_STATUS_UNIQUE, b"progress-key")
    assert q.expect(T.STATUS_RES_UNIQUE).args == (b"progress-key", b"1", b"1", *kept, b"1")


def test_a_status_whose_denominator_overflows_gearmands_buffer_is_dropped(
    farm_server, peer_factory
):
    """A denominator over 11 bytes does not fit gearmand's char[11]: it keeps the numerator,
    not the denominator, and forwards nothing (and at times closes the worker's connection,
    which farm does not copy: a farm-only test). farm kept and forwarded `000000000005`."""
    c = peer_factory(farm_server.addr)
    h = submit(c, "f", b"x")
    w = worker(peer_factory, farm_server, "f")
    grab(w)
    w.send(T.WORK_STATUS, h, b"3", b"4")
    assert c.expect(T.WORK_STATUS).args == (h, b"3", b"4")
    w.send(T.WORK_STATUS, h, b"1", b"000000000005")
    sync(w)
    q = peer_factory(farm_server.addr)
    q.send(T.GET_STATUS, h)
    assert q.expect(T.STATUS_RES).args == (h, b"1", b"1", b"1", b"4")
    w.send(T.WORK_COMPLETE, h, b"r")
    assert c.recv().type == T.WORK_COMPLETE  # the dropped WORK_STATUS never reached it


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
