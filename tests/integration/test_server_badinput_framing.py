"""Hostile and broken framing and arguments: truncated packets and headers, bodies over
the size limit, uniques too long, wrong argument counts, NULs in arguments; the server
answers or closes as docs/server.md says and a queued job survives every case.

``any_server`` where gearmand 1.1.20 behaves the same; ``farm_server`` for
farm's stricter rules (docs/gearmand-probes.md lists what gearmand does).
"""

from __future__ import annotations

import pytest

from farm.protocol import PacketType as T
from tests.helpers import badinput
from tests.helpers.badinput import assert_healthy, header, packet, sync
from tests.helpers.peers import Peer

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
keeper_any = badinput.keeper_any
keeper_farm = badinput.keeper_farm
small_farm = badinput.small_farm

# -- framing -------------------------------------------------------------------


def test_truncated_packet_then_close(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(header(T.SUBMIT_JOB, 100) + b"keep\0\0par")
    assert p.nothing_within(0.2), "a partial packet gets no answer"
    p.close()
    assert_healthy(srv, h)
    q = Peer(srv.addr)
    try:
        assert q.admin("status") == "keep\t1\t0\t0\n.\n", "the half submit created no job"
    finally:
        q.close()


def test_truncated_header_then_close(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(b"\0RE")
    assert p.nothing_within(0.2)
    p.close()
    assert_healthy(srv, h)


def test_oversized_body_errors_at_the_header_and_is_read_past_unbuffered(small_farm, peer_factory):
    # farm: --max-packet; the header alone brings ERROR, and the body is read past, never
    # buffered (the server's count of partial bytes would refuse a 2 GB one otherwise).
    srv, h = small_farm
    p = peer_factory(srv.addr)
    p.send_raw(header(T.ECHO_REQ, 2**31))
    err = p.expect(T.ERROR, timeout=5)
    assert err.args[0] == b"ARGUMENT_TOO_LARGE"
    p.send_raw(b"x" * (4 << 20))  # 4 MB of the 2 GB body: taken and dropped
    assert_healthy(srv, h)
    p.close()


def test_a_body_over_the_limit_is_refused_and_the_connection_goes_on(small_farm, peer_factory):
    # It closed the connection, mid-send for a large body: PHP's GearmanClient saw a broken
    # pipe, and its next call on the same client waited for ever for the lost one.
    srv, h = small_farm
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.SUBMIT_JOB, b"f\0\0" + b"x" * 1025) + packet(T.ECHO_REQ, b"after"))
    err = p.expect(T.ERROR, timeout=5)
    assert err.args == (
        b"ARGUMENT_TOO_LARGE",
        b"packet body of 1028 bytes exceeds the limit of 1024",
    )
    assert p.expect(T.ECHO_RES).args == (b"after",)
    sync(p)
    assert_healthy(srv, h)


def test_a_held_grab_workers_job_accept_over_the_limit_is_read_past(small_farm, peer_factory):
    # JOB_ACCEPT is a packet like the others once held grab is negotiated (an unknown type
    # before: test_farms_own_numbers_over_the_size_limit_close_as_unknown).
    srv, h = small_farm
    p = peer_factory(srv.addr)
    p.send(T.OPTION_REQ, "held-grab")
    assert p.expect(T.OPTION_RES).args == (b"held-grab",)
    p.send_raw(packet(T.JOB_ACCEPT, b"H:x:1\0" + b"x" * 1025) + packet(T.ECHO_REQ, b"after"))
    assert p.expect(T.ERROR, timeout=5).args[0] == b"ARGUMENT_TOO_LARGE"
    assert p.expect(T.ECHO_RES).args == (b"after",)
    assert_healthy(srv, h)


def test_body_at_the_limit_is_accepted(small_farm, peer_factory):
    srv, h = small_farm
    p = peer_factory(srv.addr)
    p.send(T.ECHO_REQ, b"z" * 1024)
    assert p.expect(T.ECHO_RES).args == (b"z" * 1024,)
    assert_healthy(srv, h)


# -- arguments -----------------------------------------------------------------


def test_unique_of_63_bytes_is_accepted(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send(T.SUBMIT_JOB_BG, "u", b"k" * 63, "x")
    p.expect(T.JOB_CREATED)
    assert p.admin("show unique jobs").count("k" * 63) == 1


def test_unique_of_100_bytes_is_argument_too_large(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send(T.SUBMIT_JOB, "u", b"y" * 100, "x")
    err = p.expect(T.ERROR)
    assert err.args[0] == b"ARGUMENT_TOO_LARGE"
    sync(p)
    assert "u\t" not in p.admin("status")
    assert_healthy(srv, h)


@pytest.mark.parametrize("length", [64, 65])
def test_unique_of_64_or_more_is_argument_too_large_farm(keeper_farm, peer_factory, length):
    # farm: gearmand silently cuts a 64-byte unique to 63.
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send(T.SUBMIT_JOB_BG, "u", b"y" * length, "x")
    err = p.expect(T.ERROR)
    assert err.args[0] == b"ARGUMENT_TOO_LARGE"
    sync(p)
    assert p.admin("show unique jobs") == "\n.\n", "no job was created"
    assert_healthy(srv, h)


@pytest.mark.parametrize(
    "ptype,body",
    [
        (T.SUBMIT_JOB, b"f\0u"),
        (T.SUBMIT_JOB, b"f"),
        (T.SUBMIT_JOB_BG, b""),
        (T.WORK_STATUS, b"H:x:1\0"),
        (T.SUBMIT_REDUCE_JOB, b"f\0u\0r\0d"),
        (T.SUBMIT_JOB_EPOCH, b"f\0u\0d"),
    ],
    ids=["submit-2", "submit-1", "bg-0", "work_status-2", "reduce-4", "epoch-3"],
)
def test_wrong_argument_count_is_an_error_farm(keeper_farm, peer_factory, ptype, body):
    # farm: ERROR (gearmand sends nothing and waits forever).
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send_raw(packet(ptype, body))
    err = p.expect(T.ERROR, timeout=5)
    assert err.args[0]
    assert_healthy(srv, h)
    status = Peer(srv.addr)
    try:
        assert status.admin("status") == "keep\t1\t0\t0\n.\n", "no job was created"
    finally:
        status.close()


def test_packet_behind_a_wrong_argument_count_is_answered_farm(keeper_farm, peer_factory):
    # Pipelined in one write: what follows the bad packet is decoded in the same turn,
    # not left waiting for the peer's next bytes (which a waiting client never sends).
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.SUBMIT_JOB, b"f") + packet(T.ECHO_REQ, b"behind"))
    assert p.expect(T.ERROR, timeout=5).args[0] == b"INVALID_COMMAND"
    assert p.expect(T.ECHO_RES, timeout=5).args == (b"behind",)
    assert_healthy(srv, h)


def test_worker_answer_over_the_limit_fails_the_job_once(small_farm, peer_factory):
    # farm: a result the server refuses would be refused again on every rerun; the job
    # fails (WORK_EXCEPTION for a client that asked, WORK_FAIL for the rest) instead. The
    # worker is told nothing (gearmand takes the result): an ERROR it never asked for ended
    # PHP's `while ($worker->work())` with "unexpected packet", the next jobs left waiting.
    srv, h = small_farm
    worker = peer_factory(srv.addr)
    worker.send(T.CAN_DO, "big")
    client = peer_factory(srv.addr)
    client.send(T.OPTION_REQ, "exceptions")
    client.expect(T.OPTION_RES)
    plain = peer_factory(srv.addr)
    client.send(T.SUBMIT_JOB, "big", "one", "x")
    plain.send(T.SUBMIT_JOB, "big", "one", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    assert plain.expect(T.JOB_CREATED).args[0] == handle
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == handle
    worker.send_raw(packet(T.WORK_COMPLETE, handle + b"\0" + b"r" * 2000))
    exc = client.expect(T.WORK_EXCEPTION, timeout=5).args
    assert exc[0] == handle
    assert b"too large" in exc[1] and b"exceeds the limit of 1024" in exc[1], exc
    assert plain.expect(T.WORK_FAIL, timeout=5).args[0] == handle
    assert "big\t0\t0\t" in plain.admin("status"), "the job was not put back to run again"
    worker.send(T.ECHO_REQ, "next")
    assert worker.expect(T.ECHO_RES).args == (b"next",), "no ERROR came before it"
    plain.send(T.SUBMIT_JOB, "big", "two", "x")
    second = plain.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == second  # it serves on
    assert_healthy(srv, h)


def test_a_nul_inside_a_last_argument_that_is_not_data_ends_it(keeper_any, peer_factory):
    # gearmand reads such arguments as C strings. farm kept the NUL, and a STATUS_RES
    # naming the handle could not be framed: the asking client's connection was closed.
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.GET_STATUS, b"H:nope\0tail") + packet(T.ECHO_REQ, b"after"))
    assert p.expect(T.STATUS_RES, timeout=5).args[:3] == (b"H:nope", b"0", b"0")
    assert p.expect(T.ECHO_RES, timeout=5).args == (b"after",)
    assert_healthy(srv, h)


def test_a_nul_in_a_workers_status_does_not_cost_other_clients(keeper_any, peer_factory):
    srv, h = keeper_any
    worker = peer_factory(srv.addr)
    worker.send(T.CAN_DO, "nul")
    client = peer_factory(srv.addr)
    client.send(T.SUBMIT_JOB_BG, "nul", "nul-unique", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == handle
    worker.send_raw(packet(T.WORK_STATUS, handle + b"\0" + b"1\0" + b"2\0x"))
    sync(worker)
    asker = peer_factory(srv.addr)
    asker.send(T.GET_STATUS_UNIQUE, "nul-unique")
    status = asker.expect(T.STATUS_RES_UNIQUE, timeout=5).args
    assert status[3:5] == (b"1", b"2"), status
    sync(asker)
    assert_healthy(srv, h)


def test_a_negative_maxqueue_is_no_limit(keeper_any, peer_factory):
    srv, h = keeper_any
    admin = peer_factory(srv.addr)
    assert admin.admin("maxqueue negq -1").startswith("OK")
    client = peer_factory(srv.addr)
    for _ in range(3):
        client.send(T.SUBMIT_JOB_BG, "negq", "", "x")
        assert client.expect(T.JOB_CREATED, timeout=5)
    assert_healthy(srv, h)
