"""farm.AsyncClient's calls cancelled as a web service's requests are (the client went away,
an ``asyncio.timeout()`` ran out): what the shared client keeps of each afterwards. Its
staying in step for the next call is in test_aio_cut_short.py."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from farm.client.aio import AsyncClient
from tests.helpers.servers import Server, stop_process

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
