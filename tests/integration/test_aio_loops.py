"""farm.AsyncClient across event loops, against farm's server and gearmand: one client used
from asyncio's and uvloop's loops in turn, a loop that closes or connects while another
holds the client, and closing calls still connecting."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
import weakref

import pytest

import farm
from farm.client.admin import admin_query
from farm.client.aio import AsyncClient
from tests.helpers import aiojobs
from tests.helpers.aiojobs import run_async
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
served = aiojobs.served


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_one_client_across_event_loops(served: Server, kind: str) -> None:
    # A second asyncio.run() with the same client raised asyncio's "Event loop is closed"
    # from deep inside; now it connects anew on the new loop, and use from two live loops
    # at once is refused with a message that says so. Each loop's connections close as it
    # ends: they were left open, each socket a ResourceWarning (uvloop's at its close()).
    client = AsyncClient(served.addr)

    async def call(data: bytes) -> bytes:
        return await client.call("reverse", data, timeout=30)

    def run(data: bytes) -> bytes:
        with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
            return runner.run(call(data))

    # What earlier tests of this process left for the collector warns as it goes: not
    # during the watch below (CI once counted another test's transport as this client's).
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert run(b"ab") == b"ba"
        assert run(b"cd") == b"dc"

        other = new_loop(kind)
        try:
            started = threading.Event()
            stop = other.create_future()

            async def hold() -> None:
                await client.call("reverse", b"x", timeout=30)  # connects on this loop
                started.set()
                await stop

            runner = threading.Thread(target=other.run_until_complete, args=(hold(),))
            runner.start()
            assert started.wait(30)
            with pytest.raises(RuntimeError, match="another event loop"):
                run(b"ef")
            other.call_soon_threadsafe(stop.set_result, None)
            runner.join(30)
            other.run_until_complete(other.shutdown_asyncgens())  # as asyncio.run() ends one
        finally:
            other.close()
        assert run(b"gh") == b"hg"
        with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as last:
            last.run(client.close())
        gc.collect()  # the stdlib's transports warn as they are collected
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_a_new_loop_that_reaches_another_server_closes_its_own_connection() -> None:
    # A hand-made loop closed without shutdown_asyncgens() left its end hook in the client.
    # The next loop, whose call went to the other server, then started none of its own
    # and kept the first loop's connection to the first server as if it were its own: its
    # connection to the second server stayed open after asyncio.run() ended.
    first, second = start_farm_server(), start_farm_server()
    try:
        client = AsyncClient([first.addr, second.addr])  # calls without a unique rotate
        loop = asyncio.new_event_loop()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # that loop's, documented
            assert loop.run_until_complete(client.echo(b"one")) == b"one"  # to first
            loop.close()
            assert asyncio.run(client.echo(b"two")) == b"two"  # to second, then it ends
            gc.collect()

        def connections() -> int:  # the admin query's own among them
            return len(admin_query(second.addr, "workers", timeout=10).splitlines()) - 1

        wait_for("the second server to see the connection closed", lambda: connections() == 1)
        assert client._conns == {}
    finally:
        first.stop()
        second.stop()


def test_close_from_another_loop_is_refused_and_closes_nothing(served: Server) -> None:
    # It set the client closed and closed the owner's transports from the wrong thread,
    # so the owner's calls were never told; now it refuses as every other method does,
    # and closing on the owner's loop (run_coroutine_threadsafe) fails them as closed.
    client = AsyncClient(served.addr)
    owner = asyncio.new_event_loop()
    serving = threading.Thread(target=owner.run_forever)
    serving.start()
    try:
        submitted = asyncio.run_coroutine_threadsafe(client.submit("gated", b"a"), owner)
        task = submitted.result(30)
        waiting = asyncio.run_coroutine_threadsafe(client.wait(task), owner)
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(client.close())
        assert asyncio.run_coroutine_threadsafe(client.echo(b"still"), owner).result(30) == (
            b"still"
        )
        asyncio.run_coroutine_threadsafe(client.close(), owner).result(30)
        with pytest.raises(farm.ServerUnavailable, match="AsyncClient was closed"):
            waiting.result(30)
    finally:
        owner.call_soon_threadsafe(owner.stop)
        serving.join(30)
        owner.run_until_complete(owner.shutdown_asyncgens())
        owner.close()


@run_async
async def test_status_of_something_else_than_a_task_or_handle_is_a_type_error(
    served: Server,
) -> None:
    async with AsyncClient(served.addr) as client:
        with pytest.raises(TypeError, match="a Task or a handle string, not int"):
            await client.status(123)  # type: ignore[arg-type]


@run_async
async def test_close_fails_pending_calls_as_closed_not_as_a_server_gone(served: Server) -> None:
    # A call without a unique key said "job server ... went away while holding job", which
    # sends an operator to the server's logs for a client's own close().
    client = AsyncClient(served.addr)
    plain = asyncio.ensure_future(client.call("nobody-serves-this", b"x", timeout=30))
    keyed = asyncio.ensure_future(client.call("nobody-serves-this", b"y", unique="k1", timeout=30))
    await client.echo(b"sync")  # both submits are out
    await client.close()
    for call in (plain, keyed):
        with pytest.raises(farm.ServerUnavailable, match="the farm.AsyncClient was closed"):
            await call


@pytest.mark.timeout(30)
def test_close_fails_a_call_still_connecting_at_once_as_closed() -> None:
    # A call connecting to a host that answers no connect when close() came (a shutdown)
    # waited out connect_timeout, then said "no job server is reachable ... (TimeoutError)";
    # the connect went on meanwhile. It fails at once, as closed, and the connect ends.
    from tests.helpers.stalled import unanswered_listener

    async def closing(addr: str) -> float:
        client = AsyncClient(addr, connect_timeout=20)
        call = asyncio.ensure_future(client.call("reverse", "x"))
        while not client._connecting:
            await asyncio.sleep(0.01)
        connecting = next(iter(client._connecting.values()))
        began = asyncio.get_running_loop().time()
        await client.close()
        with pytest.raises(farm.ServerUnavailable, match="closed"):
            await call
        assert connecting.done()
        return asyncio.get_running_loop().time() - began

    with unanswered_listener() as hung:
        assert asyncio.run(closing(hung)) < 5


@pytest.mark.timeout(60)
def test_a_second_loop_while_the_first_still_connects_is_refused() -> None:
    # Two threads, each with its asyncio.run(), on one client: while the first loop's
    # connect was under way the second awaited that loop's connect future, and asyncio
    # raised "Task ... got Future ... attached to a different loop" (most runs of two at
    # once), not "make one per loop" as with a connection made.
    from tests.helpers.stalled import unanswered_listener

    with unanswered_listener() as hung:
        client = AsyncClient(hung, connect_timeout=20)
        owner = asyncio.new_event_loop()
        serving = threading.Thread(target=owner.run_forever)
        serving.start()
        try:
            call = asyncio.run_coroutine_threadsafe(client.call("reverse", "x"), owner)
            wait_for("the first loop connecting", lambda: bool(client._connecting))
            with pytest.raises(RuntimeError, match="make one per loop"):
                asyncio.run(client.call("reverse", "y"))
            asyncio.run_coroutine_threadsafe(client.close(), owner).result(30)
            with pytest.raises(farm.ServerUnavailable):
                call.result(30)
        finally:
            owner.call_soon_threadsafe(owner.stop)
            serving.join(30)
            owner.run_until_complete(owner.shutdown_asyncgens())
            owner.close()


@pytest.mark.timeout(60)
def test_a_connect_left_by_a_closed_loop_is_not_awaited_by_the_next() -> None:
    # A loop closed with a connect under way, its tasks not cancelled first (a loop per test
    # closed as older pytest-asyncio closed it): the connect stayed in the client, and every
    # call on a later loop awaited that dead loop's future: asyncio's "attached to a
    # different loop" RuntimeError, on every call to that server from then on.
    from tests.helpers.stalled import unanswered_listener

    with unanswered_listener() as hung:
        client = AsyncClient(hung, connect_timeout=1)
        first = asyncio.new_event_loop()
        with pytest.raises(TimeoutError):
            first.run_until_complete(asyncio.wait_for(client.call("reverse", "x"), 0.2))
        first.run_until_complete(first.shutdown_asyncgens())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pending connect is destroyed with it
            first.close()

        async def again() -> None:
            with pytest.raises(farm.ServerUnavailable, match="no job server is reachable"):
                await client.call("reverse", "y")

        asyncio.run(again())
        gc.collect()


def test_an_async_client_left_unclosed_is_freed_while_its_loop_runs(farm_server: Server) -> None:
    # Each connection's protocol held the client (its resubmit, a bound method) and the
    # loop holds the protocol while it reads: a program that made short-lived AsyncClients
    # in one long-running loop, without closing them, kept every one (and its socket) until
    # the loop ended. Now the client goes with its last reference, says so as asyncio's
    # transports do, and its connection is closed on its loop.
    async def main() -> None:
        client = AsyncClient(farm_server.addr)
        assert await client.echo(b"x") == b"x"
        conn = client._conns[farm_server.addr]
        gone = weakref.ref(client)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            del client
            gc.collect()
        said = [str(w.message) for w in caught if w.category is ResourceWarning]
        del caught  # a warning holds its source
        assert gone() is None, "an idle AsyncClient outlived its last reference"
        assert any("unclosed" in line and "AsyncClient" in line for line in said), said
        for _ in range(100):  # closed on its loop, a turn or two later
            if conn.transport is None:
                break
            await asyncio.sleep(0)
        assert conn.transport is None, "the collected client's connection stayed open"

    asyncio.run(main())
