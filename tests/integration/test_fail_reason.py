"""OPTION_REQ fail-reason (docs/held-grab.md): a WORK_FAIL the server made (a timeout, the
retries run out, an operator's cancel) says why after its handle, to a client that asked;
every other client, and every worker's own WORK_FAIL, get the handle alone, as before.
farm's clients ask, and say why in the error: "or the server failed it (farm's: past its
timeout, or its workers died job_retries times, its log says which)" named every cause."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import pytest

import farm
from farm import protocol as p
from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server

TIMED_OUT = b"it ran past its worker's timeout of 1 s (CAN_DO_TIMEOUT)"


def whole(peer: Peer) -> Peer:
    """``peer`` reading WORK_FAIL whole: what follows a NUL after the handle shows."""
    peer.decoder = p.Decoder(allow_admin=False, fail_reason=True)
    return peer


def asks(peer: Peer) -> Peer:
    peer.send(T.OPTION_REQ, "fail-reason")
    assert peer.expect(T.OPTION_RES).args == (b"fail-reason",)
    return whole(peer)


def running(client: Peer, other: Peer, worker: Peer, function: str) -> bytes:
    """A job of ``function`` both clients wait on (one unique), in ``worker``'s hands."""
    client.send(T.SUBMIT_JOB, function, "u-1", b"x")
    handle = bytes(client.expect(T.JOB_CREATED).args[0])
    other.send(T.SUBMIT_JOB, function, "u-1", b"x")
    assert other.expect(T.JOB_CREATED).args[0] == handle
    worker.send(T.GRAB_JOB_UNIQ)
    assert worker.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    return handle


def test_a_timeout_says_why_to_the_client_that_asked_alone(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    worker = peer_factory(farm_server.addr)
    asked, plain = asks(peer_factory(farm_server.addr)), whole(peer_factory(farm_server.addr))
    worker.send(T.CAN_DO_TIMEOUT, "slow", "1")
    handle = running(asked, plain, worker, "slow")
    assert asked.expect(T.WORK_FAIL, timeout=10).args == (handle + b"\0" + TIMED_OUT,)
    assert plain.expect(T.WORK_FAIL, timeout=10).args == (handle,)


def test_a_workers_own_fail_comes_with_its_handle_alone(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    worker = peer_factory(farm_server.addr)
    asked, plain = asks(peer_factory(farm_server.addr)), whole(peer_factory(farm_server.addr))
    worker.send(T.CAN_DO, "f")
    handle = running(asked, plain, worker, "f")
    worker.send(T.WORK_FAIL, handle)
    assert asked.expect(T.WORK_FAIL).args == (handle,)
    assert plain.expect(T.WORK_FAIL).args == (handle,)


def test_an_operators_cancel_and_the_retries_run_out_say_so(
    peer_factory: Callable[[str], Peer],
) -> None:
    srv = start_farm_server("--job-retries", "1")
    try:
        worker = peer_factory(srv.addr)
        asked, plain = asks(peer_factory(srv.addr)), whole(peer_factory(srv.addr))
        worker.send(T.CAN_DO, "f")
        handle = running(asked, plain, worker, "f")
        assert admin_query(srv.addr, f"cancel job {handle.decode()}", timeout=10) == "OK\r\n"
        why = b"an operator cancelled it (admin: cancel job)"
        assert asked.expect(T.WORK_FAIL).args == (handle + b"\0" + why,)
        assert plain.expect(T.WORK_FAIL).args == (handle,)
        # A worker that dies in its job, with job_retries = 1: no other run.
        dying = peer_factory(srv.addr)
        dying.send(T.CAN_DO, "g")
        handle = running(asked, plain, dying, "g")
        dying.close()
        why = b"its worker died running it (job_retries = 1)"
        assert asked.expect(T.WORK_FAIL, timeout=10).args == (handle + b"\0" + why,)
        assert plain.expect(T.WORK_FAIL, timeout=10).args == (handle,)
    finally:
        srv.stop()


def _timed_out_worker(addr: str, grabbed: threading.Event) -> Peer:
    """A worker of "slow" under a 1 s CAN_DO_TIMEOUT asleep, that grabs the job it is
    woken for and holds it (in a thread: the caller's call waits meanwhile)."""
    worker = Peer(addr)
    worker.send(T.CAN_DO_TIMEOUT, "slow", "1")
    worker.send(T.PRE_SLEEP)

    def grab() -> None:
        worker.expect(T.NOOP, timeout=30)
        worker.send(T.GRAB_JOB_UNIQ)
        worker.expect(T.JOB_ASSIGN_UNIQ)
        grabbed.set()

    threading.Thread(target=grab, daemon=True).start()
    return worker


def test_farm_client_says_why_the_server_failed_its_job(farm_server: Server) -> None:
    grabbed = threading.Event()
    worker = _timed_out_worker(farm_server.addr, grabbed)
    try:
        with farm.Client(farm_server.addr) as client:
            with pytest.raises(farm.JobFailed) as raised:
                client.call("slow", b"x", timeout=30)
            assert grabbed.is_set()
            assert raised.value.reason == TIMED_OUT.decode()
            assert str(raised.value).endswith(
                "(slow) failed: the server failed it: " + TIMED_OUT.decode()
            ), raised.value
            # The connection serves on: the option's answer refused nothing.
            assert client.echo(b"still") == b"still"
    finally:
        worker.close()


def test_async_client_says_why_the_server_failed_its_job(farm_server: Server) -> None:
    import asyncio

    grabbed = threading.Event()
    worker = _timed_out_worker(farm_server.addr, grabbed)
    outcome: Future[BaseException] = Future()

    async def main() -> None:
        async with farm.AsyncClient(farm_server.addr) as client:
            try:
                await client.call("slow", b"x", timeout=30)
            except farm.JobFailed as e:
                outcome.set_result(e)

    try:
        asyncio.run(main())
    finally:
        worker.close()
    error = outcome.result(timeout=0)
    assert isinstance(error, farm.JobFailed) and error.reason == TIMED_OUT.decode(), error
    assert "the server failed it: " + TIMED_OUT.decode() in str(error)


def test_gearmand_refuses_the_option_and_farms_client_keeps_its_connection(
    gearmand: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # gearmand knows no farm option: ERROR UNKNOWN_OPTION. The blocking client took any
    # ERROR as a server that may close next, and gave such a connection up once idle: each
    # call against gearmand would have dialled anew.
    peer = peer_factory(gearmand.addr)
    peer.send(T.OPTION_REQ, "fail-reason")
    assert peer.expect(T.ERROR).args[0] == b"UNKNOWN_OPTION"
    with farm.Client(gearmand.addr) as client:
        assert client.echo(b"one") == b"one"
        conn = client._wire.conns[gearmand.addr]
        assert client.echo(b"two") == b"two"
        assert client._wire.conns[gearmand.addr] is conn
