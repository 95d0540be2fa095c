"""farm.AsyncClient's calls cancelled as a web service's requests are (the client went away,
an ``asyncio.timeout()`` ran out): what the shared client keeps of each afterwards. Its
staying in step for the next call is in test_aio_cut_short.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from farm.client.aio import AsyncClient
from tests.helpers.servers import Server, stop_process
from tests.helpers.serving import serving

# How far a foreground submit got when its caller was cancelled: written, its server stopped
# (no JOB_CREATED until it goes on), or created (its JOB_CREATED read, the submit not
# resumed yet: the cancel wins, as asyncio's does over a result that came in that turn).
STAGES = ["written", "created"]


def cancel_once(job: asyncio.Future[Any], ready: Any) -> None:
    """Cancel ``job`` in the first loop turn in which ``ready()``, before ``job`` runs in
    it: a callback polled each turn, not a task (a task's wake-up comes a turn later,
    after the submit's own, which returned its Task then)."""
    loop = asyncio.get_running_loop()

    def poll() -> None:
        if job.done():
            return
        if ready():
            job.cancel()
        else:
            loop.call_soon(poll)

    loop.call_soon(poll)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stage", STAGES)
def test_a_cancelled_foreground_submit_is_given_up(farm_server: Server, stage: str) -> None:
    # Its caller never got the Task, so nothing can wait for it or abandon it: it was kept
    # with its payload until its job ended (for ever for a function no worker serves), and
    # 10,000 such submits of 10 kB held 108 MB in the client, where as many cancelled calls
    # held 0.8 MB. Its job itself runs on, as docs/client.md says of a cancelled submit.
    async def main() -> None:
        async with AsyncClient(farm_server.addr) as client:
            assert await client.echo(b"connected") == b"connected"
            conn = client._conns[farm_server.addr]
            for n in range(3):
                if stage == "written":
                    stop_process(farm_server.proc.pid)
                job = asyncio.ensure_future(client.submit("nobody", b"payload %d" % n))
                if stage == "written":
                    cancel_once(job, lambda: not conn.session.queued)  # the loop's write
                else:
                    held = len(conn.session._running)
                    cancel_once(job, lambda held=held: len(conn.session._running) > held)
                with pytest.raises(asyncio.CancelledError):
                    await job
                os.kill(farm_server.proc.pid, signal.SIGCONT)
            # One connection answers in order: its JOB_CREATEDs have all been read by now.
            assert await client.echo(b"after") == b"after"
            assert conn.session._running == {}, "a cancelled submit's task is kept"

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        os.kill(farm_server.proc.pid, signal.SIGCONT)


def cancel_as_woken(job: asyncio.Task[Any], nth: int, made: list[object]) -> None:
    """Cancel ``job`` as the ``nth`` future it awaits is done, before it resumes (the
    cancel and the wake-up in one loop turn: a client that went away as its result came,
    an ``asyncio.timeout()`` that ran out then); ``made`` gets that future."""
    loop = asyncio.get_running_loop()
    seen: list[object] = []

    def poll() -> None:
        if job.done():
            return
        awaited = getattr(job, "_fut_waiter", None)  # what the task waits on (asyncio's)
        if awaited is not None and awaited.done() and awaited not in seen:
            seen.append(awaited)
            if len(seen) == nth:
                made.append(awaited)
                job.cancel()
                return
        loop.call_soon(poll)

    loop.call_soon(poll)


async def streamed(client: AsyncClient) -> list[object]:
    return [event async for event in client.stream("chunks", b"3", timeout=30)]


async def waited(client: AsyncClient) -> bytes:
    return await client.wait(await client.submit("slow", b"0.1"), timeout=30)


CALLS: dict[str, Callable[[AsyncClient], Coroutine[Any, Any, object]]] = {
    "call": lambda client: client.call("slow", b"0.1", timeout=30),
    "stream": streamed,
    "wait": waited,
}


def slow(job: Any) -> bytes:
    time.sleep(float(job.data))
    return b"slept"


def chunks(job: Any) -> bytes:
    for n in range(int(job.data)):
        job.send_data(b"%d" % n)
        time.sleep(0.01)
    return b"done"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", sorted(CALLS))
def test_a_cancel_as_an_await_ends_is_raised(farm_server: Server, how: str) -> None:
    # Given a timeout, these awaited asyncio.wait_for, which on Python 3.11 returns what
    # came in the turn its caller was cancelled and drops the cancel: the connect's end
    # went on to submit and wait for the job, so an asyncio.timeout() that ran out then
    # waited as long as the job ran, and a task.cancel() (a client that went away) did
    # nothing; a stream went on yielding.
    async def trial(nth: int) -> tuple[str, list[object]]:
        made: list[object] = []
        async with AsyncClient(farm_server.addr) as client:
            job = asyncio.ensure_future(CALLS[how](client))
            cancel_as_woken(job, nth, made)
            try:
                outcome = f"returned {await asyncio.wait_for(asyncio.shield(job), 20)!r}"
            except asyncio.CancelledError:
                outcome = "cancelled"
            except TimeoutError:
                job.cancel()
                outcome = "still running"
        return outcome, made

    async def main() -> None:
        for nth in range(1, 20):  # each await of the call in turn, until it ends uncut
            outcome, made = await trial(nth)
            if not made:
                break
            assert outcome == "cancelled", f"cancelled at await {nth} ({made[0]}): {outcome}"
        else:
            pytest.fail("the call never ended uncancelled")

    with serving(farm_server.addr, {"slow": slow, "chunks": chunks}):
        asyncio.run(main())
