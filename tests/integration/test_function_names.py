"""Function names the libraries refuse before sending: farm's job server's rule
(farm.protocol.codec.name_problem), but for the tab Perl's Gearman joins a prefix with,
which gearmand serves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import farm
from tests.helpers.serving import reverse, serving

#: A newline, ESC, U+2028 (a line break to str.splitlines()), a name past 512 bytes.
REFUSED = [
    ("new\nline", "holds a control character"),
    ("esc\x1bape", "holds a control character"),
    ("line\u2028sep", "holds a control character"),
    ("f" * 513, "is longer than 512 bytes"),
    ("", "is empty"),
]


@pytest.mark.parametrize(("name", "why"), REFUSED)
def test_a_name_the_server_refuses_is_a_value_error_before_any_round_trip(
    farm_server: Any, name: str, why: str
) -> None:
    # The client got a ServerError after a round trip, and the worker was accepted, then
    # served nothing (the server answered its CAN_DO with ERROR INVALID_COMMAND).
    with farm.Client(farm_server.addr) as client:
        with pytest.raises(ValueError, match=f"function name .* {why}"):
            client.call(name, b"x", timeout=30)
        with pytest.raises(ValueError, match=why):
            client.submit(name, b"x", background=True)

    async def aio() -> None:
        async with farm.AsyncClient(farm_server.addr) as client:
            with pytest.raises(ValueError, match=why):
                await client.call(name, b"x", timeout=30)
            with pytest.raises(ValueError, match=why):
                await client.submit(name, b"x", background=True)

    asyncio.run(aio())
    worker = farm.Worker(farm_server.addr)
    with pytest.raises(ValueError, match=why):
        worker.register(name, reverse)
    if name:  # the Executor's names are farm.NAME
        with pytest.raises(ValueError, match=why):
            farm.Executor(servers=[farm_server.addr], function=f"farm.{name}")


def test_perls_tab_prefixed_names_still_work_against_gearmand(gearmand: Any) -> None:
    # Gearman::Client and Gearman::Worker join a prefix to each name with a tab by
    # default, and gearmand serves them: farm's libraries still call and serve such names.
    with serving(gearmand.addr, {"app\treverse": reverse}), farm.Client(gearmand.addr) as client:
        assert client.call("app\treverse", b"abc", timeout=30) == b"cba"
