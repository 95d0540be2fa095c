"""farm.Client's timeouts and size limits against farm's server and gearmand: a call's
timeout, the client's own bounding every wait and send, a month and below zero, a job over
the server's max packet, a result over 64 MiB."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest

import farm
from tests.helpers.peers import Peer
from tests.helpers.servers import free_ports, start_farm_server, stop_process
from tests.helpers.serving import reverse, serving
from tests.helpers.waiting import wait_for


def test_call_timeout_raises_timeout_and_the_client_stays_usable(any_server) -> None:
    with farm.Client(any_server.addr) as c:
        t0 = time.monotonic()
        with pytest.raises(farm.Timeout) as late:
            c.call("nobody-serves-this", b"x", timeout=0.2)
        assert "job nobody-serves-this H:" in str(late.value), "it names the job"
        assert f" on {any_server.addr} " in str(late.value), "and its server"
        assert time.monotonic() - t0 < 10, "the timeout was not honoured"  # 50x: load-proof
        with serving(any_server.addr, {"reverse": reverse}):
            assert c.call("reverse", b"xy", timeout=5) == b"yx"


def test_the_clients_timeout_bounds_every_wait_on_a_server_that_stopped(any_server) -> None:
    # A hung server (SIGSTOP: its kernel still accepts, nothing answers) must not hold a
    # client for ever once it set a timeout, as PHP's GearmanClient::setTimeout does.
    c = farm.Client(any_server.addr, timeout=0.3)
    with serving(any_server.addr, {"reverse": reverse}):
        assert c.call("reverse", b"ab") == b"ba"  # connected before the server stops
    stop_process(any_server.proc.pid)
    try:
        with pytest.raises(
            farm.Timeout, match="job reverse \\(not confirmed: it may have been created\\) on"
        ):
            c.call("reverse", b"x")
        with pytest.raises(farm.Timeout, match="not confirmed: it may have been created"):
            c.submit("reverse", b"x", background=True)
        with pytest.raises(farm.ServerUnavailable, match="did not answer within 0.3s"):
            c.status("H:nowhere:1")
        with pytest.raises(farm.ServerUnavailable, match="did not answer within 0.3s"):
            c.echo(b"ping")
        with pytest.raises(farm.Timeout, match="map of reverse: no job ended within 0.3s"):
            list(c.map("reverse", [b"a", b"b"]))
        with pytest.raises(farm.Timeout):  # a call's own timeout still comes first
            c.call("reverse", b"x", timeout=0.1)
    finally:
        os.kill(any_server.proc.pid, signal.SIGCONT)
    # The answers that come late are matched to what was given up and dropped.
    with serving(any_server.addr, {"reverse": reverse}):
        assert c.call("reverse", b"cd", timeout=30) == b"dc"
        assert c.echo(b"pong") == b"pong"
    c.close()
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout must be"):
            farm.Client("127.0.0.1:1", timeout=bad)
    with pytest.raises(TypeError, match="timeout must be"):
        farm.Client("127.0.0.1:1", timeout="5")  # type: ignore[arg-type]


def test_timeouts_of_a_month_and_below_zero(farm_server) -> None:
    # Past 2**31 ms epoll overflowed (OverflowError from every call, a traceback from
    # `farm submit -b --timeout 3000000`); a wait at or below 0 ends at once, as
    # Future.result(0) does; a call that may not wait at all is a mistake, refused before its
    # job is sent (it was sent, then abandoned, and its server marked down for it).
    with farm.Client(farm_server.addr, timeout=30 * 86400) as c:
        assert c.echo(b"month") == b"month"
        task = c.submit("nobody-serves-this", b"x")
        for look in (0, -1):
            with pytest.raises(farm.Timeout):
                c.wait(task, timeout=look)
        with serving(farm_server.addr, {"reverse": reverse}):
            done = c.submit("reverse", b"abc")
            # Its result in the socket, unread: a look reads it (it returned Timeout unread).
            wait_for(
                "the result to be sent",
                lambda: Peer(farm_server.addr).admin("status").find("reverse\t0\t0\t") >= 0,
            )
            assert c.wait(done, timeout=0) == b"cba"
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError, match="timeout must be"):
                c.call("nobody-serves-this", b"x", timeout=bad)
        with pytest.raises(TypeError, match="timeout must be"):
            c.call("nobody-serves-this", b"x", timeout="3")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="connect_timeout must be"):
            farm.Client(farm_server.addr, connect_timeout="1")  # type: ignore[arg-type]
        status = Peer(farm_server.addr).admin("status")
        assert "nobody-serves-this\t1\t" in status, "only the submit() job reached the server"


def test_a_job_over_the_servers_max_packet_says_so_and_the_client_goes_on() -> None:
    # 16 MB is past the socket buffers: the server's close breaks the send, and the ERROR it
    # sent before closing is read after all (it read "went away while holding job f").
    srv = start_farm_server("--max-packet", "1048576")
    try:
        with farm.Client(srv.addr) as c, serving(srv.addr, {"reverse": reverse}):
            with pytest.raises(farm.ServerError, match="ARGUMENT_TOO_LARGE: .* limit of 1048576"):
                c.call("reverse", b"x" * (16 << 20), timeout=30)
            assert c.echo(b"still here") == b"still here"
            # Just over the limit the whole send fits in the socket buffers and the ERROR is
            # read first; the next call reused the connection the server was closing, and
            # failed with it about every other time.
            for _ in range(20):
                with pytest.raises(farm.ServerError, match="ARGUMENT_TOO_LARGE"):
                    c.call("reverse", b"x" * 1_100_000, timeout=30)
                assert c.call("reverse", "abc", timeout=30) == b"cba"
    finally:
        srv.stop()


def test_a_result_over_64_mib_from_gearmand_fails_that_job_not_the_connection(gearmand) -> None:
    # gearmand passes on a result of any size; farm's clients read 64 MiB at most. The
    # client dropped the connection: this call read "job server ... went away" (the server
    # had not), a unique-keyed one was sent again to run again, and the others failed too.
    runs: list[bytes] = []
    release = threading.Event()

    def huge(job: Any) -> bytes:
        runs.append(job.data)
        return b"x" * ((64 << 20) + 1)

    fns = {"huge": huge, "held": lambda job: release.wait(30) and b"held " + job.data}
    with farm.Client(gearmand.addr) as c, serving(gearmand.addr, fns), serving(gearmand.addr, fns):
        held = c.submit("held", b"a")
        with pytest.raises(
            farm.JobException, match=r"WORK_COMPLETE of \d+ bytes is over the 67108864"
        ):
            c.call("huge", b"once", unique="one-run", timeout=60)
        release.set()
        assert c.wait(held, 30) == b"held a", "a job on the same connection goes on"
    assert runs == [b"once"]

    async def async_call() -> None:
        async with farm.AsyncClient(gearmand.addr) as ac:
            with pytest.raises(farm.JobException, match="is over the 67108864"):
                await ac.call("huge", b"again", timeout=60)
            assert await ac.echo(b"same connection") == b"same connection"

    with serving(gearmand.addr, fns):
        asyncio.run(async_call())


def test_a_wait_that_times_out_can_be_waited_again(any_server) -> None:
    # As Future.result(timeout): the task is not given up, its result still comes.
    with farm.Client(any_server.addr) as c:
        task = c.submit("reverse", b"later")
        with pytest.raises(farm.Timeout):
            c.wait(task, 0.2)
        with serving(any_server.addr, {"reverse": reverse}):
            assert c.wait(task, 30) == b"retal"
        assert task.done


def test_the_clients_timeout_bounds_a_send_the_server_does_not_take(farm_server) -> None:
    # A job larger than the sockets buffer, to a server that stopped: the send waited for
    # ever, whatever the client's timeout. What was not sent waits for the server.
    c = farm.Client(farm_server.addr, timeout=0.5)
    with serving(farm_server.addr, {"reverse": reverse}):
        assert c.call("reverse", b"ab") == b"ba"  # connected before the server stops
    stop_process(farm_server.proc.pid)
    try:
        t0 = time.monotonic()
        with pytest.raises(farm.Timeout, match="not confirmed"):
            c.submit("reverse", b"x" * (24 << 20), background=True)
        assert time.monotonic() - t0 < 20, "the timeout was not honoured"
    finally:
        os.kill(farm_server.proc.pid, signal.SIGCONT)
    with serving(farm_server.addr, {"reverse": reverse}):
        assert c.call("reverse", b"cd", timeout=60) == b"dc"  # after the rest of the big one
    c.close()


@pytest.mark.timeout(30)
def test_a_connect_timeout_of_none_bounds_no_connect_and_breaks_nothing() -> None:
    # None, which the constructor takes, is no bound of the client's own: echo and status
    # compared it with the 0.25 s stagger, and a call given a timeout took min() of it and
    # the time left, both TypeError where two refused servers said ServerUnavailable.
    servers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with farm.Client(servers, connect_timeout=None) as c:
        with pytest.raises(farm.ServerUnavailable):
            c.echo(b"x")
        with pytest.raises(farm.ServerUnavailable):
            c.status("H:nowhere:1")
        with pytest.raises(farm.ServerUnavailable):
            c.call("reverse", b"x", timeout=1)
