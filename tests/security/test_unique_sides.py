"""A unique key never joins a TCP peer's submit to a job submitted on the Unix socket, nor
the other way round.

Gearman coalesces the submits of one function and unique into one job, and each submitter
gets its result. Every local user reaches the TCP address, and `show unique jobs` lists the
keys of live jobs there: a TCP submit of a listed key joined the farm's own job and read its
result, whatever the key (a key "nobody else can guess" was listed all the same), and a
Unix-socket caller whose key another user had used first got that user's result. Each side
coalesces with its own (docs/operations.md, "Who may do what")."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, start_farm_server
from tests.helpers.waiting import wait_for

KEY = "a3f9c1d2-never-guessed"


def _answer_all(worker: Peer, count: int) -> None:
    """Run ``count`` jobs of "f": each result names the data it was given."""
    for _ in range(count):
        worker.send(T.GRAB_JOB_UNIQ)
        handle, _function, _unique, data = worker.expect(T.JOB_ASSIGN_UNIQ).args
        worker.send(T.WORK_COMPLETE, handle, b"result of " + data)


def _created(peer: Peer, data: str) -> bytes:
    peer.send(T.SUBMIT_JOB, "f", KEY, data)
    handle: bytes = peer.expect(T.JOB_CREATED).args[0]
    return handle


@pytest.mark.parametrize("first", ["unix", "tcp"])
def test_a_key_joins_no_submit_of_the_other_side(
    peer_factory: Callable[[str], Peer], unix_sock: str, first: str
) -> None:
    srv = start_farm_server(unix=unix_sock)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        owner, other = peer_factory(f"unix:{unix_sock}"), peer_factory(srv.addr)
        if first == "tcp":
            owner, other = other, owner
        mine = _created(owner, "owner's private data")
        theirs = _created(other, "the other user's data")
        assert theirs != mine, "a submit of the other side joined the job"
        worker = peer_factory(f"unix:{unix_sock}")
        worker.send(T.CAN_DO, "f")
        _answer_all(worker, 2)
        assert owner.expect(T.WORK_COMPLETE).args == (mine, b"result of owner's private data")
        got = other.expect(T.WORK_COMPLETE).args
        assert got == (theirs, b"result of the other user's data")
    finally:
        srv.stop()


def test_a_status_by_key_sees_only_its_own_sides_job(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # GET_STATUS_UNIQUE (PHP's jobStatusByUniqueKey) from a TCP peer answered for the job of
    # the Unix socket's caller: known, running, its progress and how many wait on it.
    srv = start_farm_server(unix=unix_sock)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        owner, other = peer_factory(f"unix:{unix_sock}"), peer_factory(srv.addr)
        _created(owner, "owner's private data")
        for peer, known in ((other, b"0"), (owner, b"1")):
            peer.send(T.GET_STATUS_UNIQUE, KEY)
            args = peer.expect(T.STATUS_RES_UNIQUE).args
            assert args[:2] == (KEY.encode(), known), args
        _created(other, "the other user's data")  # its own job, which it then sees
        other.send(T.GET_STATUS_UNIQUE, KEY)
        assert other.expect(T.STATUS_RES_UNIQUE).args[1:] == (b"1", b"0", b"0", b"0", b"1")
    finally:
        srv.stop()


def test_a_status_by_handle_from_tcp_sees_no_job_of_the_unix_socket(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # GET_STATUS by handle told a TCP peer (any local user) the running state and progress of
    # the farm's own callers' jobs, whose handles `show jobs` and `jobs` list over TCP.
    srv = start_farm_server(unix=unix_sock)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        owner, other = peer_factory(f"unix:{unix_sock}"), peer_factory(srv.addr)
        mine = _created(owner, "owner's private data")
        worker = peer_factory(f"unix:{unix_sock}")
        worker.send(T.CAN_DO, "f")
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == mine
        worker.send(T.WORK_STATUS, mine, b"3", b"7")
        owner.expect(T.WORK_STATUS)
        assert mine.decode() in other.admin("show jobs"), "listed over TCP"
        other.send(T.GET_STATUS, mine)
        assert other.expect(T.STATUS_RES).args == (mine, b"0", b"0", b"0", b"0")
        owner.send(T.GET_STATUS, mine)  # its own side sees it
        assert owner.expect(T.STATUS_RES).args == (mine, b"1", b"1", b"3", b"7")
        theirs = _created(other, "the other user's data")  # a TCP job: TCP sees it, as must
        other.send(T.GET_STATUS, theirs)  # gearmand's peers, all over TCP
        assert other.expect(T.STATUS_RES).args == (theirs, b"1", b"0", b"0", b"0")
        owner.send(T.GET_STATUS, theirs)  # a handle is the server's, named by no caller
        assert owner.expect(T.STATUS_RES).args[1] == b"1"
    finally:
        srv.stop()


def test_each_side_still_coalesces_with_its_own(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    srv = start_farm_server(unix=unix_sock)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        clients = [peer_factory(addr) for addr in (f"unix:{unix_sock}", srv.addr) for _ in "ab"]
        for a, b in (clients[:2], clients[2:]):  # kept open: a job nobody waits on is dropped
            assert _created(a, "one") == _created(b, "two")  # gearmand's coalescing
        worker = peer_factory(f"unix:{unix_sock}")
        worker.send(T.CAN_DO, "f")
        _answer_all(worker, 2)  # two jobs in all: one a side
        worker.send(T.GRAB_JOB_UNIQ)
        worker.expect(T.NO_JOB)
    finally:
        srv.stop()


def test_a_replayed_job_keeps_its_side(peer_factory: Callable[[str], Peer], tmp_path: Path) -> None:
    # The side is stored with the job: after a restart a TCP submit of a Unix-socket job's
    # key would otherwise join the replayed job (and read its result) again.
    db, unix = tmp_path / "queue.db", str(tmp_path / "g.sock")
    port = free_port()
    srv = start_farm_server("--store", str(db), port=port, unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        owner = peer_factory(f"unix:{unix}")
        owner.send(T.SUBMIT_JOB_BG, "f", KEY, "stored by the farm's own caller")
        owner.expect(T.JOB_CREATED)
    finally:
        srv.stop()
    srv = start_farm_server("--store", str(db), port=port, unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        queued = peer_factory(srv.addr)
        assert "f\t1\t0\t0" in queued.admin("status")
        tcp = peer_factory(srv.addr)
        tcp.send(T.SUBMIT_JOB, "f", KEY, "the other user's data")
        tcp.expect(T.JOB_CREATED)
        assert "f\t2\t0\t0" in queued.admin("status"), "the TCP submit joined the replayed job"
        local = peer_factory(f"unix:{unix}")
        local.send(T.SUBMIT_JOB_BG, "f", KEY, "again")
        local.expect(T.JOB_CREATED)
        assert "f\t2\t0\t0" in queued.admin("status"), "the Unix side no longer coalesces"
    finally:
        srv.stop()
