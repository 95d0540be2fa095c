"""--max-functions bounds the functions the server holds for a reason (a job, a worker, a
limit of its own, an admin's `create function`); the idle entries it keeps for `status`
(up to MAX_IDLE_FUNCTIONS) are freed to make room, as docs/server.md says they are."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import farm
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server
from tests.helpers.waiting import wait_for


def test_idle_functions_leave_room_for_new_ones_past_max_functions(
    peer_factory: Callable[[str], Peer],
) -> None:
    # Five calls that timed out on five names nobody serves: once their client closed, the
    # names were idle, yet counted, and `--max-functions 5` refused every new name of every
    # TCP peer (submits, registrations, the admin's `create function`) for good.
    srv = start_farm_server("--max-functions", "5", "--tcp-admin", "full")
    try:
        with farm.Client(srv.addr) as client:
            for i in range(5):
                with pytest.raises(farm.Timeout):
                    client.call(f"gone{i}", "x", timeout=0.2)
        admin = peer_factory(srv.addr)
        wait_for(  # the closed client's queued jobs dropped: five idle names, no job
            "the given-up jobs to be dropped",
            lambda: (
                (rows := admin.admin("status").splitlines()[:-1])
                and len(rows) == 5
                and all(row.split("\t")[1:] == ["0", "0", "0"] for row in rows)
            ),
        )
        tcp = peer_factory(srv.addr)
        tcp.send(T.SUBMIT_JOB_BG, "fresh", "", "x")
        tcp.expect(T.JOB_CREATED)
        tcp.send(T.CAN_DO, "served")
        tcp.send(T.ECHO_REQ, "after the CAN_DO")
        tcp.expect(T.ECHO_RES)  # an ERROR came first when it was refused
        assert admin.admin("create function made") == "OK\r\n"
        listed = {row.split("\t")[0] for row in admin.admin("status").splitlines()[:-1]}
        assert {"fresh", "served", "made"} <= listed and len(listed) == 5
        # The functions in use still count: two more idle names to free, then none.
        tcp.send(T.CAN_DO, "x1")
        tcp.send(T.CAN_DO, "x2")
        tcp.send(T.CAN_DO, "x3")
        assert tcp.expect(T.ERROR).args == (
            b"QUEUE_ERROR",
            b"the server holds --max-functions functions",
        )
        assert admin.admin("create function y") == (
            "ERR QUEUE_ERROR the+server+holds+--max-functions+functions\r\n"
        )
    finally:
        srv.stop()


def listed(admin: Peer) -> set[str]:
    return {row.split("\t")[0] for row in admin.admin("status").splitlines()[:-1]}


def test_a_function_dropped_and_made_again_counts_until_used(
    peer_factory: Callable[[str], Peer],
) -> None:
    # `drop function` left the name in the idle ones (its dropped job's end made it idle),
    # so the entry `create function` made again looked unused and was freed for a new name.
    srv = start_farm_server("--max-functions", "2", "--tcp-admin", "full")
    try:
        admin, client = peer_factory(srv.addr), peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB_BG, "held", "", "x")
        client.expect(T.JOB_CREATED)
        client.send(T.SUBMIT_JOB_BG, "made", "", "x")
        client.expect(T.JOB_CREATED)
        assert admin.admin("drop function made") == "OK\r\n"
        assert admin.admin("create function made") == "OK\r\n"
        client.send(T.SUBMIT_JOB_BG, "fresh", "", "x")
        assert client.expect(T.ERROR).args == (
            b"QUEUE_ERROR",
            b"the server holds --max-functions functions",
        )
        assert listed(admin) == {"held", "made"}
    finally:
        srv.stop()


def test_a_function_whose_maxqueue_is_lifted_is_idle_once_unused(
    peer_factory: Callable[[str], Peer],
) -> None:
    # Its job's end found it kept for its limit, and lifting the limit looked at it no
    # more: the name counted against --max-functions for good.
    srv = start_farm_server("--max-functions", "2", "--tcp-admin", "full")
    try:
        admin, client = peer_factory(srv.addr), peer_factory(srv.addr)
        assert admin.admin("maxqueue limited 5") == "OK\r\n"
        client.send(T.SUBMIT_JOB_BG, "limited", "", "x")
        handle = client.expect(T.JOB_CREATED).args[0].decode()
        assert admin.admin(f"cancel job {handle}") == "OK\r\n"
        assert admin.admin("maxqueue limited") == "OK\r\n"  # no job, no worker, no limit
        assert admin.admin("create function made") == "OK\r\n"  # kept until used
        client.send(T.SUBMIT_JOB_BG, "fresh", "", "x")
        client.expect(T.JOB_CREATED)  # QUEUE_ERROR (--max-functions) when it counted
        assert listed(admin) == {"made", "fresh"}
    finally:
        srv.stop()


def test_a_reducer_name_frees_no_idle_function(peer_factory: Callable[[str], Peer]) -> None:
    # A reducer gets no entry, yet its name was checked against --max-functions as a new
    # function's: at the limit, that freed an idle entry for nothing.
    srv = start_farm_server("--max-functions", "2", "--tcp-admin", "full")
    try:
        admin, client = peer_factory(srv.addr), peer_factory(srv.addr)
        with farm.Client(srv.addr) as caller, pytest.raises(farm.Timeout):
            caller.call("idle", "x", timeout=0.2)
        wait_for(  # the closed caller's queued job dropped: an idle name
            "the given-up job to be dropped",
            lambda: admin.admin("status").splitlines()[:-1] == ["idle\t0\t0\t0"],
        )
        client.send(T.SUBMIT_JOB_BG, "held", "", "x")
        client.expect(T.JOB_CREATED)
        client.send(T.SUBMIT_REDUCE_JOB_BACKGROUND, "held", "", "reducer", "", "x")
        client.expect(T.JOB_CREATED)
        assert listed(admin) == {"idle", "held"}
    finally:
        srv.stop()
