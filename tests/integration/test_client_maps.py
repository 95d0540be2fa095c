"""farm.Client's tasks left behind and its map: an abandoned task is dropped, a map left
early gives up its jobs in flight, a map of large jobs reads as it sends, ordered and
unordered over two workers."""

from __future__ import annotations

import asyncio
import threading

import pytest

import farm
from tests.helpers.serving import reverse, serving


def test_an_abandoned_task_is_dropped(any_server) -> None:
    with farm.Client(any_server.addr) as c:
        task = c.submit("reverse", b"unwanted")
        c.abandon(task)
        with serving(any_server.addr, {"reverse": reverse}):
            assert c.call("reverse", b"ab", timeout=30) == b"ba"  # the client goes on
            assert c.call("reverse", b"cd", timeout=30) == b"dc"
        assert not task.done and task.result is None  # its result, if it came, was dropped
        # Nothing will end it: a wait says so at once, as Future.result() of a cancelled
        # future does, where it waited out its timeout (for ever without one).
        with pytest.raises(ValueError, match="given up"):
            c.wait(task)

        async def wait_async() -> None:
            async with farm.AsyncClient(any_server.addr) as ac:
                task = await ac.submit("reverse", b"unwanted")
                ac.abandon(task)
                with pytest.raises(ValueError, match="given up"):
                    await ac.wait(task)

        asyncio.run(wait_async())


def test_a_map_left_early_gives_up_its_jobs_in_flight(farm_server) -> None:
    # As AsyncClient.map does: a blocking map left with break kept its tasks (and their
    # results, when they came) until the client closed.
    gate = threading.Event()
    fns = {"hold": lambda job: job.data if job.data == b"a" else gate.wait(30) and job.data}
    with farm.Client(farm_server.addr) as c, serving(farm_server.addr, fns):
        results = c.map("hold", [b"a", b"b", b"c"], max_in_flight=3, ordered=False)
        assert next(results) == b"a"
        results.close()  # what a break out of a for loop does
        assert c.echo(b"sync") == b"sync"
        (conn,) = c._wire.conns.values()
        assert not conn.session._running, "nothing waits on the jobs in flight: given up"
        gate.set()
        assert c.call("hold", b"z", timeout=30) == b"z"


def test_a_map_of_large_jobs_reads_replies_while_it_sends(farm_server) -> None:
    # farm's server stops reading a client that does not read its replies; a client
    # blocked sending the rest of a map's jobs waited on the server for ever as the server
    # waited on it. 128 jobs of 1 MiB: far more than the sockets between them buffer.
    big = [bytes([i]) * (1 << 20) for i in range(128)]
    got: list[bytes] = []
    with (
        farm.Client(farm_server.addr, timeout=60) as c,
        serving(farm_server.addr, {"echo": lambda job: job.data}),
    ):
        mapping = threading.Thread(
            target=lambda: got.extend(c.map("echo", big, max_in_flight=128)), daemon=True
        )
        mapping.start()
        mapping.join(60)
        assert not mapping.is_alive(), "the map is stuck"
    assert got == big


def test_map_ordered_and_unordered_over_two_workers(any_server) -> None:
    payloads = [b"job%03d" % i for i in range(300)]
    fns = {"reverse": reverse}
    with (
        farm.Client(any_server.addr) as c,
        serving(any_server.addr, fns) as w1,
        serving(any_server.addr, fns) as w2,
    ):
        assert list(c.map("reverse", payloads, max_in_flight=32)) == [p[::-1] for p in payloads]
        unordered = list(c.map("reverse", iter(payloads), ordered=False))
        assert sorted(unordered) == sorted(p[::-1] for p in payloads)
        assert w1.jobs_done + w2.jobs_done == 600


def test_a_map_names_the_position_of_a_payload_it_cannot_send(farm_server) -> None:
    # The payloads before a bad one may have been sent (up to max_in_flight at a time; none
    # when it is among the first max_in_flight): "data holds a surrogate ..." did not say
    # which of a map's payloads it was.
    payloads: list[object] = ["a", b"b", "x\ud800y"]
    refused = r"^map payload 2 holds a surrogate that stands for no byte \('\\ud800' at index 1\)"
    not_data = r"^map payload 1 must be bytes, bytearray, memoryview or str, not int$"

    async def async_map(items: list[object]) -> list[bytes]:
        async with farm.AsyncClient(farm_server.addr) as ac:
            return [r async for r in ac.map("echo", items)]  # type: ignore[arg-type]

    with (
        farm.Client(farm_server.addr, timeout=30) as c,
        serving(farm_server.addr, {"echo": lambda job: job.data}),
    ):
        with pytest.raises(ValueError, match=refused):
            list(c.map("echo", payloads))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=not_data):
            list(c.map("echo", [b"a", 5]))  # type: ignore[list-item]
        with pytest.raises(ValueError, match=refused):
            asyncio.run(async_map(payloads))
        with pytest.raises(TypeError, match=not_data):
            asyncio.run(async_map([b"a", 5]))
        assert c.call("echo", b"on") == b"on"  # the client goes on
