"""Clients against a host that answers no connect (down, or behind a firewall that drops
our packets): a call's timeout bounds its connects, a live server behind such a host still
gets its turn, and a connect every caller gave up on ends quietly."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import farm
from farm.client import serverpick
from farm.client.dialer import Dialer
from farm.client.serverpick import key_slot
from tests.helpers.servers import Server
from tests.helpers.serving import reverse, serving
from tests.helpers.stalled import unanswered_listener


def test_the_timeout_of_a_client_or_call_bounds_its_connect_too(any_server) -> None:
    # A server host that is down (or a firewall that drops our packets) answers no connect:
    # each call waited connect_timeout (5 s by default) whatever timeout it was given.
    with unanswered_listener() as hung:
        c = farm.Client(hung, connect_timeout=10, timeout=0.3)
        asks: list[Callable[[], object]] = [
            lambda: c.call("reverse", b"x"),
            lambda: c.submit("reverse", b"x", background=True),
            lambda: c.echo(b"x"),
            lambda: c.status("H:nowhere:1"),
            lambda: list(c.map("reverse", [b"x"])),
            lambda: farm.Client(hung, connect_timeout=10).call("reverse", b"x", timeout=0.3),
        ]
        for ask in asks:
            t0 = time.monotonic()
            with pytest.raises(farm.ServerUnavailable, match=f"{hung}.*timed out"):
                ask()
            assert time.monotonic() - t0 < 5, "it waited connect_timeout, not the 0.3 s asked for"
        c.close()

        async def call_async() -> None:
            async with farm.AsyncClient(hung, connect_timeout=10) as ac:
                with pytest.raises(farm.ServerUnavailable, match=f"{hung} \\(timed out\\)"):
                    await ac.call("reverse", b"x", timeout=0.3)
                with pytest.raises(farm.ServerUnavailable, match=f"{hung} \\(timed out\\)"):
                    async for _ in ac.stream("reverse", b"x", timeout=0.3):
                        pass

        t0 = time.monotonic()
        asyncio.run(call_async())
        assert time.monotonic() - t0 < 10, "AsyncClient.call waited connect_timeout"
        # A connect that hangs takes its share of the time, not all of it: a live server
        # behind it runs the job in what is left.
        with (
            serving(any_server.addr, {"reverse": reverse}),
            farm.Client([hung, any_server.addr], connect_timeout=10) as c,
        ):
            c._wire.picker._rotation = 0  # the hung one first
            t0 = time.monotonic()
            assert c.call("reverse", b"ab", timeout=4) == b"ba"
            assert time.monotonic() - t0 < 8, "the hung server took all the call's time"


def test_a_host_that_answers_no_connect_waits_longer_than_its_connect_cost(
    farm_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It went last for DOWN_FOR (2 s) whatever its connect had cost: with connect_timeout
    # past that, a client calling all the time paid the whole connect_timeout every 2 s.
    # DOWN_FOR cut under the connect's cost, and the cost taken once, not ten times, so that
    # the test takes seconds, not minutes (the factor is the next test's).
    monkeypatch.setattr(serverpick, "DOWN_FOR", 0.1)
    monkeypatch.setattr(serverpick, "COST_FACTOR", 1)
    tries: list[tuple[float, float]] = []  # each connect to the hung host: began, gave up
    real = Dialer.connect

    def counted(self: Dialer, addr: str, timeout: float, tls: Any = None) -> Any:
        began = time.monotonic()
        try:
            return real(self, addr, timeout, tls)
        finally:
            if addr == hung:
                tries.append((began, time.monotonic()))

    monkeypatch.setattr(Dialer, "connect", counted)
    with (
        unanswered_listener() as hung,
        serving(farm_server.addr, {"reverse": reverse}),
        farm.Client([hung, farm_server.addr], connect_timeout=0.5) as c,
    ):
        t0 = time.monotonic()
        while len(tries) < 3 and time.monotonic() - t0 < 10:
            assert c.call("reverse", b"ab", timeout=5) == b"ba"
    assert len(tries) == 3, tries
    (first, gave_up), (second, gave_up_again), (third, _) = tries
    cost = gave_up - first
    assert second - gave_up >= cost, "tried again sooner than its connect had cost"
    assert third - gave_up_again >= 2 * cost, "failed twice in a row: twice as long"


def test_a_host_that_answers_no_connect_is_tried_last_for_ten_times_the_wait(any_server) -> None:
    # Each face tried it again DOWN_FOR (2 s) later, after doubling 4 and 8 s later: a 5 s
    # connect wait at 0, 7 and 16 s held calls up for 15 s of their first 25.
    def left(picker: serverpick.ServerPicker, addr: str) -> float:
        return picker._down_until[addr] - time.monotonic()

    with unanswered_listener() as hung, serving(any_server.addr, {"reverse": reverse}):
        servers = [hung, any_server.addr]
        with farm.Client(servers, connect_timeout=0.5) as c:
            c._wire.picker._rotation = 0  # the hung one first
            assert c.call("reverse", b"ab") == b"ba"
            assert left(c._wire.picker, hung) > 4, "tried last for ten times its 0.5 s wait"
        with farm.Client(servers, connect_timeout=0.5) as c:
            assert not c.status("H:nowhere:1").known  # a bare handle: each server asked
            assert left(c._wire.picker, hung) > 4, "status, echo: the same"

        async def async_call() -> float:
            async with farm.AsyncClient(servers, connect_timeout=0.5) as client:
                client._picker._rotation = 0
                assert await client.call("reverse", b"cd") == b"dc"
                return left(client._picker, hung)

        assert asyncio.run(async_call()) > 4, "AsyncClient: the same"


def test_a_resubmit_after_its_server_died_keeps_to_the_calls_timeout(any_server) -> None:
    # A keyed job whose server dies goes to another: one that answers no connect held the
    # call for connect_timeout, past the timeout it was given.
    started, release = threading.Event(), threading.Event()

    def hold(job: Any) -> bytes:
        started.set()
        release.wait(30)
        return b"held"

    def kill_when_started() -> None:
        started.wait(30)
        os.kill(any_server.proc.pid, signal.SIGKILL)

    with unanswered_listener() as hung:
        servers = [any_server.addr, hung]
        key = next(k for k in (f"k{i}" for i in range(100)) if key_slot(k, 2) == 0)
        killer = threading.Thread(target=kill_when_started, daemon=True)
        with (
            serving(any_server.addr, {"hold": hold}),
            farm.Client(servers, connect_timeout=10) as c,
        ):
            killer.start()
            t0 = time.monotonic()
            try:
                with pytest.raises(farm.ServerUnavailable, match=f"{hung} \\(timed out\\)"):
                    c.call("hold", b"x", unique=key, timeout=1)
            finally:
                release.set()
            assert time.monotonic() - t0 < 6, "the resubmit waited connect_timeout"
        killer.join(10)


def test_a_connect_every_caller_gave_up_on_is_not_logged_as_never_retrieved() -> None:
    # A call cancelled (asyncio.timeout, as docs/client.md advises) while it connects to a
    # host that answers nothing: the connect goes on, fails at connect_timeout, and asyncio
    # logged "Task exception was never retrieved" with its traceback once it was collected.
    async def main(hung: str) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        logged: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: logged.append(context))
        async with farm.AsyncClient(hung, connect_timeout=0.5) as client:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.call("reverse", b"x")
            connecting = list(client._connecting.values())
            assert connecting, "the connect goes on for a later caller"
            await asyncio.wait(connecting)  # it ends at connect_timeout
            del connecting
            gc.collect()  # asyncio logs a task's unretrieved error as it is collected
        return logged

    with unanswered_listener() as hung:
        assert asyncio.run(main(hung)) == []
