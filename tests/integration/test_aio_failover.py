"""farm.AsyncClient when a server goes wrong between two requests: one restarted while the
loop did not read (its close seen before the next request, as farm.Client sees it)."""

from __future__ import annotations

import asyncio
import select
import threading

import pytest

import farm
from farm.client.aio import AsyncClient
from tests.helpers.servers import Server, start_like
from tests.helpers.serving import reverse, serving
from tests.helpers.waiting import wait_for


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_restart_the_loop_did_not_read_is_seen_before_the_next_request(
    any_server: Server, kind: str
) -> None:
    # A loop driven a step at a time (or a coroutine's blocking work) reads nothing while
    # the server restarts: the next request went onto the dead connection, and status(task)
    # raised "went away" where farm.Client answers, a call failed as "it may have been created".
    loop = new_loop(kind)
    client = AsyncClient([any_server.addr])
    try:
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
    finally:
        loop.run_until_complete(client.close())
        loop.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_late_reply_unread_before_a_restart_is_read_then_the_close_seen(
    any_server: Server, kind: str
) -> None:
    # What waits before the close (a timed-out call's WORK_COMPLETE) is read by the loop
    # first: a look that saw only it took the closed connection for alive.
    loop = new_loop(kind)
    client = AsyncClient([any_server.addr])
    release = threading.Event()
    try:
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
    finally:
        loop.run_until_complete(client.close())
        loop.close()
