"""farm.AsyncClient and asyncio's flow control: against a server that stops reading, requests
are held in the client (not in the transport's buffer) and one given up is never sent."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import farm
from farm.client.admin import admin_query
from farm.client.aio import AsyncClient
from farm.client.serverpick import ServerPicker
from farm.protocol.tasks import Task
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.serving import reverse, serving
from tests.helpers.stalled import StalledPeer
from tests.helpers.waiting import wait_for

HIGH_WATER = 64 * 1024  # asyncio's default for a socket transport
BUFFERED_AT_MOST = 256 * 1024  # the mark, one write past it, and slack; not the calls' sum


@pytest.fixture
def stalled() -> Iterator[StalledPeer]:
    peer = StalledPeer()
    yield peer
    peer.close()


def buffered(client: AsyncClient, addr: str) -> int:
    """What the connection's transport holds that the server has not taken."""
    transport: Any = client._conns[addr].transport
    return int(transport.get_write_buffer_size())


async def turns(n: int = 5) -> None:
    """Let the loop run ``n`` turns: a call started now has been written (or held) by then."""
    for _ in range(n):
        await asyncio.sleep(0)


async def fill(client: AsyncClient, addr: str, size: int, **kw: Any) -> list[asyncio.Task[Any]]:
    """Calls of ``size`` bytes to ``addr``'s server until its transport's buffer is past the
    high-water mark (the kernel's buffers take some first); the calls, still waiting."""
    calls = []
    while buffered(client, addr) <= HIGH_WATER:
        assert len(calls) < (64 << 20) // size, "the transport never filled"
        calls.append(asyncio.ensure_future(client.call("fill", b"f" * size, **kw)))
        await turns(2)
    return calls


def test_calls_given_up_against_a_server_that_stopped_reading_stay_bounded(
    stalled: StalledPeer,
) -> None:
    async def main() -> None:
        async with AsyncClient(stalled.addr) as client:
            await client._connect(stalled.addr)
            seen: list[int] = []

            def note(_: object) -> None:  # each call's end: the buffer then
                seen.append(buffered(client, stalled.addr))

            calls = []
            for _ in range(1000):
                call = asyncio.ensure_future(client.call("f", b"x" * 16384, timeout=0.5))
                call.add_done_callback(note)
                calls.append(call)
            ended = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
            assert all(isinstance(e, farm.Timeout) for e in ended), ended[:3]
            assert max(seen) <= BUFFERED_AT_MOST, f"{max(seen)} bytes buffered for the server"
            # Nothing is kept for the calls given up, nor sent once the server reads again.
            assert client._conns[stalled.addr].session.queued == 0
            for _ in range(1000):
                with pytest.raises(farm.Timeout):
                    await client.call("f", b"y" * 16384, timeout=0.001)
            assert buffered(client, stalled.addr) <= BUFFERED_AT_MOST

    asyncio.run(main())


def test_a_cancelled_held_call_is_never_sent(stalled: StalledPeer) -> None:
    async def main() -> None:
        async with AsyncClient(stalled.addr) as client:
            await client._connect(stalled.addr)
            filling = await fill(client, stalled.addr, 16384)
            held = asyncio.ensure_future(client.call("f", b"NEVER-SENT", timeout=30))
            await turns()
            held.cancel()
            with pytest.raises(asyncio.CancelledError):
                await held
            sentinel = asyncio.ensure_future(client.call("f", b"SENTINEL", timeout=30))
            stalled.read()
            # Requests leave in order: once the later one is there, the cancelled one would be.
            await asyncio.to_thread(wait_for, "the sentinel", lambda: stalled.seen(b"SENTINEL"))
            assert not stalled.seen(b"NEVER-SENT"), "the cancelled call was sent"
            for call in [*filling, sentinel]:
                call.cancel()

    asyncio.run(main())


def test_close_while_paused_ends_the_held_calls(stalled: StalledPeer) -> None:
    async def main() -> None:
        client = AsyncClient(stalled.addr)
        await client._connect(stalled.addr)
        filling = await fill(client, stalled.addr, 16384)
        held = asyncio.ensure_future(client.call("f", b"held", timeout=30))
        await turns()
        await client.close()
        for call in [*filling, held]:
            with pytest.raises(farm.ServerUnavailable, match="closed"):
                await asyncio.wait_for(call, 10)
        stalled.read()
        assert await asyncio.to_thread(stalled.ended.wait, 10), "the client did not close"
        assert not stalled.seen(b"held"), "a call held at close() was sent"

    asyncio.run(main())


def test_close_fails_a_waiting_query_as_closed_as_it_fails_calls(stalled: StalledPeer) -> None:
    # A query closed so read "connection to ... lost", as if the server had gone.
    async def main() -> None:
        client = AsyncClient(stalled.addr)
        await client._connect(stalled.addr)
        asked = asyncio.ensure_future(client.echo(b"never answered"))
        called = asyncio.ensure_future(client.call("f", b"x", timeout=30))
        await turns()
        await client.close()
        for waiting in (asked, called):
            with pytest.raises(farm.ServerUnavailable, match="the farm.AsyncClient was closed"):
                await asyncio.wait_for(waiting, 10)

    asyncio.run(main())


@pytest.fixture
def stopped_farm_server() -> Iterator[Server]:
    """A farm server with a worker of ``reverse``; the test SIGSTOPs it, SIGCONT comes last."""
    srv = start_farm_server()
    try:
        with serving(srv.addr, {"reverse": reverse, "fill": reverse}):
            yield srv
            os.kill(srv.proc.pid, signal.SIGCONT)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def test_a_call_held_while_the_server_was_stopped_completes_when_it_reads_again(
    stopped_farm_server: Server,
) -> None:
    srv = stopped_farm_server

    async def main() -> None:
        async with AsyncClient(srv.addr) as client:
            assert await client.call("reverse", b"ab", timeout=30) == b"ba"
            os.kill(srv.proc.pid, signal.SIGSTOP)
            filling = await fill(client, srv.addr, 1 << 20, timeout=60)
            before = buffered(client, srv.addr)
            marker = b"m" * (1 << 20) + b"end"
            held = asyncio.ensure_future(client.call("reverse", marker, timeout=60))
            await turns()
            assert buffered(client, srv.addr) - before < len(marker), "it went to the transport"
            os.kill(srv.proc.pid, signal.SIGCONT)
            assert await asyncio.wait_for(held, 60) == marker[::-1]
            results = await asyncio.wait_for(asyncio.gather(*filling), 60)
            assert all(r == b"f" * (1 << 20) for r in results)

    asyncio.run(main())


def key_for(addr: str, servers: list[str]) -> str:
    """A unique key whose jobs start at ``addr``."""
    picker = ServerPicker(servers)
    return next(k for k in (f"key-{i}" for i in range(1000)) if picker.order(k)[0] == addr)


def test_a_job_resubmitted_to_a_paused_server_is_held_there(stalled: StalledPeer) -> None:
    srv = start_farm_server()  # no worker: the job waits there until the server dies
    servers = [srv.addr, stalled.addr]

    async def main() -> None:
        async with AsyncClient(servers) as client:
            await client._connect(stalled.addr)
            key = key_for(stalled.addr, servers)
            filling = await fill(client, stalled.addr, 16384, unique=key, timeout=30)
            moving = asyncio.ensure_future(
                client.call("f", b"RESUBMITTED", unique=key_for(srv.addr, servers), timeout=30)
            )
            await asyncio.to_thread(
                wait_for, "the job at the farm server", lambda: queued(srv.addr, "f") == 1
            )
            srv.proc.kill()  # the job is lost with it: once elsewhere, with its key
            lost = client._conns[srv.addr]
            await asyncio.to_thread(wait_for, "the loss", lambda: lost.transport is None)
            await turns()
            moving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await moving
            sentinel = asyncio.ensure_future(client.call("f", b"SENTINEL", unique=key))
            stalled.read()
            await asyncio.to_thread(wait_for, "the sentinel", lambda: stalled.seen(b"SENTINEL"))
            assert not stalled.seen(b"RESUBMITTED"), "the given-up job was sent on"
            for call in [*filling, sentinel]:
                call.cancel()

    try:
        asyncio.run(main())
    finally:
        srv.stop()


def queued(addr: str, function: str) -> int:
    """How many jobs of ``function`` the server holds (admin ``status``)."""
    for line in admin_query(addr, "status", timeout=10).splitlines():
        fields = line.split("\t")
        if fields[0] == function:
            return int(fields[1])
    return 0


def test_jobs_without_a_key_go_past_a_paused_server(stalled: StalledPeer) -> None:
    srv = start_farm_server()
    servers = [stalled.addr, srv.addr]

    async def main() -> None:
        async with AsyncClient(servers) as client:
            await client._connect(stalled.addr)
            key = key_for(stalled.addr, servers)
            filling = await fill(client, stalled.addr, 16384, unique=key, timeout=30)
            # Rotation would send every other one to the stalled server, to wait there.
            calls = [client.call("reverse", f"job-{i}", timeout=10) for i in range(20)]
            results = await asyncio.gather(*calls)
            assert results == [f"job-{i}".encode()[::-1] for i in range(20)]
            for call in filling:
                call.cancel()

    try:
        with serving(srv.addr, {"reverse": reverse}):
            asyncio.run(main())
    finally:
        srv.stop()


def test_a_task_kept_keeps_no_closed_client_alive(farm_server: Server) -> None:
    # Each task's Waiter held its AsyncClient strongly (only to tell whose task it is), so
    # a task kept (a list of handles, a job table) kept its closed client alive, and all
    # that it holds, after its loop had ended.
    async def main() -> tuple[Task[Any], weakref.ref[AsyncClient]]:
        client = AsyncClient(farm_server.addr)
        task = await client.submit("nobody", b"x")  # queued: no worker serves it
        await client.close()
        return task, weakref.ref(client)

    task, gone = asyncio.run(main())
    gc.collect()
    assert task.handle and gone() is None
