"""What a long-lived client keeps of its calls that timed out on jobs that never end (no
worker serves them): the server keeps such a job queued until the connection closes (as
gearmand: Gearman has no cancel), and the client only enough to drop the job's late news,
bounded (farm.protocol.copies.MAX_SILENT)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Iterator

import pytest

import farm
from farm.protocol import copies
from tests.helpers.servers import Server

CALLS = 400
SILENT = 64  # copies.MAX_SILENT, made small so that the calls pass it well
ONLY_FARM = [tracemalloc.Filter(True, "*/farm/*")]


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(copies, "MAX_SILENT", SILENT)
    tracemalloc.start()
    yield
    tracemalloc.stop()


def farm_snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(ONLY_FARM)


def held_since(before: tracemalloc.Snapshot) -> int:
    """The bytes farm's own code allocated since ``before`` and still holds."""
    return sum(stat.size_diff for stat in farm_snapshot().compare_to(before, "filename"))


@pytest.mark.usefixtures("traced")
def test_a_clients_calls_that_timed_out_are_not_kept(farm_server: Server) -> None:
    # Each such call kept its task in the caller until the client closed: 3.5 MB a 10,000.
    with farm.Client(farm_server.addr) as client:

        def calls(tag: str) -> None:
            for i in range(CALLS):
                with pytest.raises(farm.Timeout):
                    client.call(f"nobody-{tag}-{i}", "x", timeout=0.002)

        calls("warm")  # the connection, and SILENT jobs' handles already kept
        before = farm_snapshot()
        calls("measured")
        grew = held_since(before)
    assert grew < CALLS * 100, f"{grew} bytes held for {CALLS} calls given up"


@pytest.mark.usefixtures("traced")
def test_an_async_clients_calls_that_timed_out_are_not_kept(farm_server: Server) -> None:
    async def main() -> int:
        async with farm.AsyncClient(farm_server.addr) as client:

            async def calls(tag: str) -> None:
                for i in range(CALLS):
                    with pytest.raises(farm.Timeout):
                        await client.call(f"nobody-{tag}-{i}", "x", timeout=0.002)

            await calls("warm")
            before = farm_snapshot()
            await calls("measured")
            return held_since(before)

    grew = asyncio.run(main())
    assert grew < CALLS * 100, f"{grew} bytes held for {CALLS} calls given up"
