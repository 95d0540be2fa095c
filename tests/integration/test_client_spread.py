"""Several servers, one refusing every connect: jobs without a unique key spread evenly
over the live ones (farm.Client and AsyncClient pick by one rule, farm.client.serverpick)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

import farm
from tests.helpers.servers import free_port, start_like
from tests.helpers.serving import reverse, serving


@pytest.fixture
def one_of_three_refusing(farm_server) -> Iterator[tuple[list[str], list[str]]]:
    """Three servers, the middle one refusing every connect: (all three, the live two),
    with a worker serving "reverse" on the live two."""
    other = start_like(farm_server)
    live = [farm_server.addr, other.addr]
    try:
        with serving(live, {"reverse": reverse}):
            yield [live[0], f"127.0.0.1:{free_port()}", live[1]], live
    finally:
        other.stop()


def test_unkeyed_jobs_spread_evenly_over_the_live_servers(one_of_three_refusing) -> None:
    # Rotated over all three, the refusing server's turns each fell to the live one after
    # it: 20 jobs of 30 on one server, 10 on the other.
    addrs, live = one_of_three_refusing
    on: Counter[str | None] = Counter()
    with farm.Client(addrs) as c:
        for i in range(30):
            task = c.submit("reverse", b"%d" % i)
            on[task.server] += 1
            assert c.wait(task, timeout=30) == (b"%d" % i)[::-1]
    assert set(on) == set(live) and abs(on[live[0]] - on[live[1]]) <= 1, on


def test_async_unkeyed_jobs_spread_evenly_over_the_live_servers(one_of_three_refusing) -> None:
    # AsyncClient picks by the same rule (20 of 30 on one server before).
    addrs, live = one_of_three_refusing
    on: Counter[str | None] = Counter()

    async def main() -> None:
        async with farm.AsyncClient(addrs) as client:
            for i in range(30):
                task = await client.submit("reverse", b"%d" % i)
                on[task.server] += 1
                assert await client.wait(task, timeout=30) == (b"%d" % i)[::-1]

    asyncio.run(main())
    assert set(on) == set(live) and abs(on[live[0]] - on[live[1]]) <= 1, on
