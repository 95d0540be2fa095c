"""farm.AsyncClient when a server goes wrong between two requests: one restarted while the
loop did not read (its close seen before the next request, as farm.Client sees it), and one
that takes submits and never answers, given up by the caller's own asyncio.timeout()."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import farm
from farm.client.aio import AsyncClient
from farm.protocol import Decoder, Packet, encode_res
from farm.protocol import PacketType as T
from tests.helpers import aiojobs
from tests.helpers.aiojobs import run_async
from tests.helpers.servers import Server, start_like
from tests.helpers.serving import reverse, serving
from tests.helpers.stalled import StalledPeer
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
served = aiojobs.served


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


@contextmanager
def stepped(kind: str, addr: str) -> Iterator[tuple[asyncio.AbstractEventLoop, AsyncClient]]:
    """A loop of ``kind`` driven a step at a time, and an AsyncClient of ``addr`` on it."""
    loop = new_loop(kind)
    client = AsyncClient([addr])
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.close())
        loop.close()


@pytest.fixture
def stalled() -> Iterator[StalledPeer]:
    """A server that takes a connection and never answers (hung, SIGSTOPped)."""
    peer = StalledPeer()
    yield peer
    peer.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_restart_the_loop_did_not_read_is_seen_before_the_next_request(
    any_server: Server, kind: str
) -> None:
    # A loop driven a step at a time (or a coroutine's blocking work) reads nothing while
    # the server restarts: the next request went onto the dead connection, and status(task)
    # raised "went away" where farm.Client answers, a call failed as "it may have been created".
    with stepped(kind, any_server.addr) as (loop, client):
        task = loop.run_until_complete(client.submit("nobody-serves-this", b"x", background=True))
        any_server.stop()
        again = start_like(any_server, port=any_server.port)
        try:
            status = loop.run_until_complete(asyncio.wait_for(client.status(task), 10))
            assert not status.known, "the new server never had it"
            with serving([again.addr], {"reverse": reverse}):
                call = client.call("reverse", b"abc", timeout=10)
                assert loop.run_until_complete(call) == b"cba"
        finally:
            again.stop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_late_reply_unread_before_a_restart_is_read_then_the_close_seen(
    any_server: Server, kind: str
) -> None:
    # What waits before the close (a timed-out call's WORK_COMPLETE) is read by the loop
    # first: a look that saw only it took the closed connection for alive.
    release = threading.Event()
    with stepped(kind, any_server.addr) as (loop, client):
        with serving([any_server.addr], {"slow": lambda job: release.wait(30) and b"late"}) as w:
            with pytest.raises(farm.Timeout):
                loop.run_until_complete(client.call("slow", b"x", timeout=0.2))
            release.set()
            wait_for("the job to end", lambda: w.jobs_done == 1)
            sock = client._conns[any_server.addr].transport.get_extra_info("socket")  # type: ignore[union-attr]
            assert select.select([sock], [], [], 10)[0], "its WORK_COMPLETE reached the client"
        any_server.stop()
        again = start_like(any_server, port=any_server.port)
        try:
            with serving([again.addr], {"reverse": reverse}):
                call = client.call("reverse", b"abc", timeout=10)
                assert loop.run_until_complete(call) == b"cba"
        finally:
            again.stop()


@run_async
async def test_a_call_cancelled_unanswered_puts_its_server_last(
    served: Server, stalled: StalledPeer
) -> None:
    # Only call()'s own timeout= marked a server that never said JOB_CREATED; under
    # asyncio.timeout() (as docs/client.md advises) every other call went to the hung one.
    outcomes: list[object] = []
    async with AsyncClient([stalled.addr, served.addr]) as client:
        for i in range(6):
            try:
                async with asyncio.timeout(1):
                    outcomes.append(await client.call("reverse", f"c{i}"))
            except TimeoutError:
                outcomes.append("timed out")
    assert outcomes.count("timed out") == 1, outcomes


@run_async
async def test_a_submit_cancelled_unanswered_puts_its_server_last(
    farm_server: Server, stalled: StalledPeer
) -> None:
    servers: list[object] = []
    async with AsyncClient([stalled.addr, farm_server.addr]) as client:
        for i in range(6):
            try:
                async with asyncio.timeout(1):
                    task = await client.submit("nobody-serves-this", f"s{i}", background=True)
                servers.append(task.server)
            except TimeoutError:
                servers.append("timed out")
    assert servers.count("timed out") == 1, servers
    assert set(servers) == {"timed out", farm_server.addr}


@run_async
async def test_a_map_cancelled_unanswered_puts_its_server_last(
    served: Server, stalled: StalledPeer
) -> None:
    # Half of each map's jobs went to the hung server: an ordered map never yielded again.
    payloads = [b"p%d" % i for i in range(10)]
    got: list[list[bytes]] = []
    async with AsyncClient([stalled.addr, served.addr]) as client:
        for _ in range(3):
            results: list[bytes] = []
            try:
                async with asyncio.timeout(1):
                    results.extend([r async for r in client.map("reverse", payloads)])
            except TimeoutError:
                pass
            got.append(results)
    assert got[0] == [], "its first job went to the hung server"
    assert got[1:] == [[p[::-1] for p in payloads]] * 2


@run_async
async def test_a_stream_cancelled_unanswered_puts_its_server_last(
    served: Server, stalled: StalledPeer
) -> None:
    outcomes: list[object] = []
    async with AsyncClient([stalled.addr, served.addr]) as client:
        for i in range(6):
            try:
                async with asyncio.timeout(1):
                    events = [e async for e in client.stream("reverse", f"s{i}")]
                outcomes.append(events[-1].task.result)
            except TimeoutError:
                outcomes.append("timed out")
    assert outcomes.count("timed out") == 1, outcomes


def _scripted(
    listener: socket.socket,
    answer: Callable[[int], tuple[bytes, bool]],
    closed: threading.Event | None = None,
) -> None:
    """A scripted server: OPTION_RES to each OPTION_REQ; to the Nth SUBMIT_JOB (counted over
    its connections), ``answer(N)``'s bytes, and the connection's close when it says so
    (then ``closed`` is set: what it sent and its close wait in the kernel's buffers)."""
    jobs = 0
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # the test closed it
            return
        with conn:  # closed on leaving
            decoder, done = Decoder(allow_admin=False, server_side=True), False
            while not done and (data := conn.recv(65536)):
                for packet in decoder.feed(data):
                    assert isinstance(packet, Packet)
                    if packet.type == T.OPTION_REQ:
                        conn.sendall(encode_res(T.OPTION_RES, packet.args[0]))
                    elif packet.type == T.SUBMIT_JOB:
                        jobs += 1
                        reply, done = answer(jobs)
                        conn.sendall(reply)
                        if done:
                            break
        if done and closed is not None:
            closed.set()


def _job_done(handle: bytes, result: bytes) -> bytes:
    return encode_res(T.JOB_CREATED, handle) + encode_res(T.WORK_COMPLETE, handle, result)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_late_reply_of_several_mb_is_read_then_the_close_seen(kind: str) -> None:
    # A look that let the transport read for 8 turns at most (~2 MB) gave up halfway through
    # a late 3 MB reply and took the closed connection for alive: the next call was lost
    # with it ("went away"), and the late reply too, though all of it had been sent.
    # 3 MB: the most Linux's default TCP buffers (4 MB) surely hold while the client reads
    # nothing, so that the close is behind it when the loop runs again, not still to come.
    listener = socket.create_server(("127.0.0.1", 0))
    closed = threading.Event()

    def answer(n: int) -> tuple[bytes, bool]:  # the second job's reply late, then the close
        return _job_done(b"H:%d" % n, b"B" * 3_000_000 if n == 2 else b"ok"), n == 2

    threading.Thread(target=_scripted, args=(listener, answer, closed), daemon=True).start()
    with stepped(kind, f"127.0.0.1:{listener.getsockname()[1]}") as (loop, client):
        assert loop.run_until_complete(client.call("f", timeout=10)) == b"ok"
        task = loop.run_until_complete(client.submit("f"))
        assert closed.wait(10), "the server sent the late reply and closed"
        time.sleep(0.2)  # a loop blocked a while (the review's slept 1 s): past READ_RECENTLY
        # The loop runs again only now: the reply waits unread, and its close behind it.
        assert loop.run_until_complete(client.call("f", timeout=10)) == b"ok"
        assert len(loop.run_until_complete(client.wait(task, timeout=10))) == 3_000_000
    listener.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_connection_lost_whose_descriptor_another_file_took_is_not_reused(kind: str) -> None:
    # The look for an unseen close polled the lost connection's descriptor within 50 ms of
    # its last read: a file the program opened meanwhile had that number, showed no end,
    # and the next call went onto the dead connection ("is closed").
    listener = socket.create_server(("127.0.0.1", 0))
    once = (listener, lambda n: (_job_done(b"H:1", b"ok"), True))  # each answered, then closed
    threading.Thread(target=_scripted, args=once, daemon=True).start()

    async def calls() -> list[bytes]:
        first = await client.call("f", timeout=5)
        await asyncio.sleep(0.005)  # the loop reads the close: the descriptor is freed
        with open(__file__, "rb"):  # and a file takes it
            return [first, await client.call("f", timeout=5)]

    with stepped(kind, f"127.0.0.1:{listener.getsockname()[1]}") as (loop, client):
        assert loop.run_until_complete(calls()) == [b"ok", b"ok"]
    listener.close()
