"""farm.AsyncClient's submit cut short by a signal handler's exception after its queueing,
as the connection schedules its write (tests/integration/test_aio_cut_short.py has the
read, the write and the queueing itself): the connection goes, and the cut job is never
sent with a later call's request."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from types import FrameType
from typing import Any

import pytest

from farm.client.aio import AsyncClient
from tests.helpers.servers import Server
from tests.helpers.serving import serving


class TimeLimit(Exception):
    """What the request's alarm raises."""


@pytest.mark.timeout(60)
def test_a_submit_cut_as_its_flush_is_scheduled_is_not_sent_with_the_next_call(
    farm_server: Server,
) -> None:
    # The exception lands after the queueing, as the connection schedules its write
    # (send_soon's call_soon): submit() raised, the connection was kept, and the packet
    # left with the next call's, so a job whose submit raised ran all the same.
    ran: list[bytes] = []
    shots: list[str] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if shots or event != "call" or frame.f_code.co_name != "call_soon":
            return
        up = frame.f_back
        by = None if up is None or up.f_back is None else up.f_back.f_code.co_name
        if up is not None and up.f_code.co_name == "send_soon" and by == "submit":
            shots.append("call_soon")
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def limit(signum: int, frame: FrameType | None) -> None:
        raise TimeLimit

    def record(job: Any) -> bytes:
        ran.append(job.data)
        return job.data

    async def main() -> None:
        async with AsyncClient(farm_server.addr) as client:
            assert await client.echo(b"warm") == b"warm"
            sys.setprofile(hook)
            try:
                with pytest.raises(TimeLimit):
                    await client.submit("record", b"cut", background=True)
            finally:
                sys.setprofile(None)
            assert shots == ["call_soon"]
            # A foreground job after it: on one connection the server takes submits in
            # order, so the cut one, had it left with this, would have run first.
            assert await asyncio.wait_for(client.call("record", b"next", timeout=10), 15) == b"next"

    previous = signal.signal(signal.SIGUSR1, limit)
    try:
        with serving(farm_server.addr, {"record": record}):
            asyncio.run(main())
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert ran == [b"next"], ran
