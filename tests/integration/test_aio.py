"""farm.AsyncClient against farm's server and gearmand, with a real worker serving it."""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

import farm
from farm.client.admin import admin_query
from farm.client.aio import AsyncClient, JobData, JobEnded, JobProgress, JobWarning
from farm.worker import Job, Worker
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for


def chatty(job: Job) -> bytes:
    """Reports progress, a data chunk and a warning before its result."""
    job.send_status(1, 3)
    job.send_data(b"part:" + job.data)
    job.send_warning(b"careful")
    job.send_status(3, 3)
    return job.data.upper()


def explode(job: Job) -> bytes:
    raise ValueError(f"cannot handle {job.text}")


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


gate = threading.Event()


def gated(job: Job) -> bytes:
    gate.wait(30)
    return b"opened:" + job.data


@pytest.fixture
def served(any_server: Server) -> Iterator[Server]:
    """Two worker threads (so one may block in ``gated`` while the other serves)."""
    workers = []
    for _ in range(2):
        w = Worker(any_server.addr)
        w.register("reverse", lambda job: job.data[::-1])
        w.register("chatty", chatty)
        w.register("explode", explode)
        w.register("gated", gated)
        workers.append(w)
    threads = [threading.Thread(target=w.work, daemon=True) for w in workers]
    for t in threads:
        t.start()
    gate.clear()
    yield any_server
    gate.set()
    for w in workers:
        w.stop()
    for t in threads:
        t.join(10)


@run_async
async def test_call(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        assert await client.call("reverse", "hello", timeout=30) == b"olleh"
        assert await client.echo(b"ping") == b"ping"


@run_async
async def test_callbacks_see_status_data_warning(served: Server) -> None:
    seen: list[object] = []
    async with AsyncClient(served.addr) as client:
        result = await client.call(
            "chatty",
            b"x",
            timeout=30,
            on_status=lambda n, d: seen.append((n, d)),
            on_data=seen.append,
            on_warning=seen.append,
        )
    assert result == b"X"
    assert seen == [(1, 3), b"part:x", b"careful", (3, 3)]


@run_async
async def test_stream_yields_events_then_the_result(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        events = [e async for e in client.stream("chatty", b"abc", timeout=30)]
    kinds = [type(e) for e in events]
    assert kinds == [JobProgress, JobData, JobWarning, JobProgress, JobEnded]
    assert (events[0].numerator, events[0].denominator) == (1, 3)
    assert events[1].data == b"part:abc" and events[2].data == b"careful"
    assert events[-1].task.result == b"ABC"


def raised(server: Server, text: str) -> Any:
    """What a call of ``explode`` raises: its exception's text through farm's server; through
    gearmand, which mangles WORK_FAIL for clients without the exceptions option, farm.Worker
    ends the job with a plain WORK_FAIL (OPTION_REQ work-exception)."""
    if server.kind == "farm":
        return pytest.raises(farm.JobException, match=text)
    return pytest.raises(farm.JobFailed)


@run_async
async def test_stream_raises_the_job_error(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        with raised(served, "ValueError: cannot handle boom"):
            async for _ in client.stream("explode", b"boom", timeout=30):
                pass


@run_async
async def test_exception(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        with raised(served, "ValueError: cannot handle y") as err:
            await client.call("explode", "y", timeout=30)
        if served.kind == "farm":
            assert err.value.text == "ValueError: cannot handle y"
        assert await client.call("reverse", "ok", timeout=30) == b"ko"  # the connection lives on


@run_async
async def test_fifty_concurrent_calls_share_one_connection(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        payloads = [f"job-{i}".encode() for i in range(50)]
        results = await asyncio.gather(*(client.call("reverse", p, timeout=30) for p in payloads))
        assert results == [p[::-1] for p in payloads]
        assert len(client._conns) == 1


@run_async
async def test_submit_background_and_foreground(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        task = await client.submit("reverse", "bg", background=True)
        assert task.handle and task.done and task.background
        fg = await client.submit("gated", "fg")
        assert fg.handle and not fg.done
        status = await client.status(fg)
        assert status.known
        gate.set()
        assert await client.wait(fg, timeout=30) == b"opened:fg"
        with pytest.raises(ValueError, match="background"):
            await client.wait(task)


@run_async
async def test_timeout_then_other_calls_still_work(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        with pytest.raises(farm.Timeout):
            await client.call("gated", "slow", timeout=0.2)
        assert await client.call("reverse", "abc", timeout=30) == b"cba"


@run_async
async def test_a_wait_that_times_out_can_be_waited_again(served: Server) -> None:
    async with AsyncClient(served.addr) as client:
        task = await client.submit("gated", "late")
        with pytest.raises(farm.Timeout):
            await client.wait(task, timeout=0.2)
        gate.set()
        assert await client.wait(task, timeout=30) == b"opened:late"


@run_async
async def test_no_server_reachable() -> None:
    client = AsyncClient("127.0.0.1:1", connect_timeout=2)
    with pytest.raises(farm.ServerUnavailable, match="127.0.0.1:1"):
        await client.call("reverse", "x")


@run_async
async def test_close_fails_calls_in_flight_and_sends_none_again(served: Server) -> None:
    # close() ended the connection, and a call with a unique key was resubmitted (to the
    # same server, through a fresh connection): it ran twice, after close.
    client = AsyncClient(served.addr)
    call = asyncio.ensure_future(client.call("gated", "x", unique="closing-1", timeout=30))
    while not client._conns or not next(iter(client._conns.values())).session.busy:
        await asyncio.sleep(0.01)  # until the job is sent
    await client.close()
    with pytest.raises(farm.ServerUnavailable, match="closed"):
        await call
    assert not client._conns, "no connection opened after close"
    with pytest.raises(RuntimeError, match="closed"):
        await client.call("reverse", "again")


@run_async
async def test_a_cancelled_call_is_abandoned(served: Server) -> None:
    # Cancelling (as wait_for does) left the task in the session, its news still delivered.
    async with AsyncClient(served.addr) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.call("gated", "x"), 0.5)
        (conn,) = client._conns.values()
        assert not conn.session.busy, "the session still held the cancelled call"
        gate.set()
        assert await client.call("reverse", "ab", timeout=30) == b"ba"


@run_async
async def test_status_of_a_handle_with_no_server_answering_raises(any_server: Server) -> None:
    # "not known" from nobody read as "finished".
    from tests.helpers.servers import free_port

    async with AsyncClient(f"127.0.0.1:{free_port()}", connect_timeout=2) as client:
        with pytest.raises(farm.ServerUnavailable, match="no job server answered"):
            await client.status("H:host:1")
    blocking = farm.Client(f"127.0.0.1:{free_port()}")
    with pytest.raises(farm.ServerUnavailable, match="no job server answered"):
        blocking.status("H:host:1")
    blocking.close()
    blocking = farm.Client(any_server.addr)
    blocking.close()
    with pytest.raises(RuntimeError, match="closed"):
        blocking.call("reverse", "x", timeout=5)


@run_async
async def test_map_ordered_unordered_and_a_failure_where_its_result_would_be(
    served: Server,
) -> None:
    payloads = [b"job%03d" % i for i in range(200)]
    async with AsyncClient(served.addr) as client:
        got = [r async for r in client.map("reverse", payloads, max_in_flight=16)]
        assert got == [p[::-1] for p in payloads]
        loose = [r async for r in client.map("reverse", iter(payloads), ordered=False)]
        assert sorted(loose) == sorted(p[::-1] for p in payloads)
        results = client.map("explode", ["a"])
        with raised(served, "cannot handle a"):
            await anext(results)
        with pytest.raises(ValueError, match="max_in_flight"):
            await anext(client.map("reverse", [b"x"], max_in_flight=0))


@run_async
async def test_map_stopped_early_gives_up_the_jobs_in_flight(served: Server) -> None:
    gate.clear()
    async with AsyncClient(served.addr) as client:
        results = client.map("gated", [b"a", b"b", b"c"], max_in_flight=3)
        first = asyncio.ensure_future(anext(results))
        await asyncio.sleep(0)  # its three calls are submitted
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await results.aclose()
        assert await client.echo(b"sync") == b"sync"  # every JOB_CREATED has come
        (conn,) = client._conns.values()
        assert not conn.session._running, "nothing waits on the gated jobs: given up"
        gate.set()
        assert await client.call("reverse", "ok", timeout=30) == b"ko"  # the client goes on


@run_async
async def test_status_unique(served: Server) -> None:
    gate.clear()
    async with AsyncClient(served.addr) as client:
        task = await client.submit("gated", b"u", unique="status-me")
        status = await client.status_unique("status-me")
        assert status.known
        gate.set()
        assert await client.wait(task, 30) == b"opened:u"
        with pytest.raises(ValueError, match="unique key"):
            await client.status_unique("u" * 64)


@run_async
async def test_close_while_connecting_sends_nothing(served: Server) -> None:
    # close() came while a call's connection was being made: the call went out on it
    # afterwards, ran, and the connection stayed open.
    client = AsyncClient(served.addr)
    call = asyncio.ensure_future(client.call("reverse", "late"))
    await asyncio.sleep(0)  # the call is connecting
    await client.close()
    with pytest.raises((RuntimeError, farm.ServerUnavailable)):
        await call
    assert not [c for c in client._conns.values() if c.transport is not None]


@run_async
async def test_a_bad_timeout_is_refused_before_the_job_is_sent(served: Server) -> None:
    # call(timeout="3") raised asyncio's own TypeError after the job had gone out, and the
    # job was never given up.
    async with AsyncClient(served.addr) as client:
        with pytest.raises(TypeError, match="timeout must be"):
            await client.call("nobody-serves-this", b"x", timeout="3")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be"):
            await client.call("nobody-serves-this", b"x", timeout=0)
        with pytest.raises(ValueError, match="timeout must be"):
            async for _ in client.stream("nobody-serves-this", b"x", timeout=-1):
                pass
        assert "nobody-serves-this" not in await asyncio.to_thread(
            lambda: Peer(served.addr).admin("status")
        ), "no job reached the server"
    with pytest.raises(TypeError, match="connect_timeout must be"):
        AsyncClient(served.addr, connect_timeout="1")  # type: ignore[arg-type]


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
