"""farm.AsyncClient against farm's server and gearmand, with a real worker serving it: calls,
callbacks, streams, errors, timeouts, map, status and close. One client used from several
event loops is in test_aio_loops.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import farm
from farm.client.aio import AsyncClient, JobData, JobEnded, JobProgress, JobWarning
from tests.helpers import aiojobs
from tests.helpers.aiojobs import gate, run_async
from tests.helpers.peers import Peer
from tests.helpers.servers import Server

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
served = aiojobs.served


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


@run_async
async def test_wait_and_abandon_take_the_task_not_its_handle(served: Server) -> None:
    # A handle string (what status() takes) raised AttributeError from inside them.
    takes = r"\(\) takes the Task that submit\(\) returned, not str$"
    async with AsyncClient(served.addr) as client:
        task = await client.submit("reverse", b"abc")
        assert task.handle is not None
        with pytest.raises(TypeError, match="^wait" + takes):
            await client.wait(task.handle)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="^abandon" + takes):
            client.abandon(task.handle)  # type: ignore[arg-type]
        assert await client.wait(task, timeout=30) == b"cba"  # left as it was
