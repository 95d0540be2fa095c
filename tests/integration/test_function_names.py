"""Function names gearmand serves and farm's job server refuses (a control character, over
512 bytes: farm.protocol.codec.name_problem): the libraries send them, since they talk to
both, and farm's server's refusal reaches the caller as a ServerError naming the reason and
the function, and a worker's log as the function it will get no jobs of."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import farm
from farm.protocol.worker import WorkerSession
from tests.helpers.serving import reverse, serving
from tests.helpers.waiting import wait_for

#: Names gearmand serves, one of each kind farm's server refuses: Perl's tab-joined
#: prefix, a newline, ESC, DEL, NEL (a C1 control), U+2028, a name past 512 bytes.
GEARMAND_SERVES = [
    "app\treverse",
    "new\nline",
    "esc\x1bape",
    "del\x7fete",
    "nel\x85line",
    "line\u2028sep",
    "f" * 513,
]

#: What farm's server says of each kind: its ERROR's code and text.
FARM_REFUSES = [
    ("app\treverse", "INVALID_COMMAND", "function name holds a control character"),
    ("nel\x85line", "INVALID_COMMAND", "function name holds a control character"),
    ("f" * 513, "ARGUMENT_TOO_LARGE", "function name is longer than 512 bytes"),
]


def test_names_gearmand_serves_are_called_and_served_through_farms_libraries(
    gearmand: Any,
) -> None:
    # farm.Client, AsyncClient and Worker.register raised ValueError for all but the tab,
    # farm's server's rule, though gearmand (how farm grows past one machine) serves them.
    functions = dict.fromkeys(GEARMAND_SERVES, reverse)
    with serving(gearmand.addr, functions), farm.Client(gearmand.addr) as client:
        for name in GEARMAND_SERVES:
            assert client.call(name, b"abc", timeout=30) == b"cba", name

        async def aio() -> None:
            async with farm.AsyncClient(gearmand.addr) as aclient:
                for name in GEARMAND_SERVES:
                    assert await aclient.call(name, b"abc", timeout=30) == b"cba", name

        asyncio.run(aio())


@pytest.mark.parametrize(("name", "code", "why"), FARM_REFUSES)
def test_farms_server_refuses_them_with_a_server_error_naming_reason_and_function(
    farm_server: Any, name: str, code: str, why: str
) -> None:
    said = f"{code}: {why} (function {name!r})"
    with farm.Client(farm_server.addr) as client:
        with pytest.raises(farm.ServerError) as raised:
            client.call(name, b"x", timeout=30)
        assert str(raised.value) == said
        assert (raised.value.code, raised.value.text, raised.value.function) == (code, why, name)
        with pytest.raises(farm.ServerError) as raised:
            client.submit(name, b"x", background=True)
        assert str(raised.value) == said

    async def aio() -> None:
        async with farm.AsyncClient(farm_server.addr) as client:
            with pytest.raises(farm.ServerError) as raised:
                await client.call(name, b"x", timeout=30)
            assert str(raised.value) == said

    asyncio.run(aio())


def test_a_worker_whose_can_do_farms_server_refuses_logs_which_function(
    farm_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # It logged "job server ADDR: INVALID_COMMAND function name holds a control character":
    # no word of which function, nor that the worker would get no jobs of it.
    name = "nel\x85line"
    said = (
        f"job server {farm_server.addr} refused function {name!r} (INVALID_COMMAND: function"
        " name holds a control character): no jobs of it come to this worker from there"
    )
    with (
        caplog.at_level(logging.WARNING, logger="farm.worker"),
        serving(farm_server.addr, {name: reverse, "fine": reverse}),
    ):
        wait_for(
            "the worker's refusal logged",
            lambda: any(r.getMessage() == said for r in caplog.records),
        )
        with farm.Client(farm_server.addr) as client:  # its other functions serve on
            assert client.call("fine", b"abc", timeout=30) == b"cba"


@pytest.mark.parametrize("name", ["", "nul\0inside"])
def test_what_no_server_takes_is_a_value_error_before_sending(name: str) -> None:
    # Empty, or a NUL (the packet's separator): no server can take them, so nothing is sent
    # (the servers named here are never dialled).
    with (
        farm.Client("127.0.0.1:1") as client,
        pytest.raises(ValueError, match="must be non-empty and contain no NUL"),
    ):
        client.call(name, b"x", timeout=30)
    with pytest.raises(ValueError, match="must be non-empty"):
        farm.Worker("127.0.0.1:1").register(name, reverse)


@pytest.mark.parametrize("name", ["nel\x85line", "farm.python"])
def test_a_held_grab_worker_of_refused_functions_only_waits_rather_than_spins(
    farm_server: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Its one CAN_DO refused (a control character; a reserved farm.* name over TCP), the
    # connection served nothing, and its held grab got NO_JOB at once: the worker grabbed
    # again, about 20,000 times a second, half a core on the worker and on the server.
    grabs = [0]
    grab = WorkerSession.grab

    def counted(session: WorkerSession) -> None:
        grabs[0] += 1
        grab(session)

    monkeypatch.setattr(WorkerSession, "grab", counted)
    with (
        caplog.at_level(logging.WARNING, logger="farm.worker"),
        serving(farm_server.addr, {name: reverse}),
    ):
        wait_for("the worker's refusal logged", lambda: bool(caplog.records))
        wait_for("its first grab", lambda: grabs[0] >= 1)
        before = grabs[0]
        time.sleep(1)  # the span a spin shows in: nothing comes to end it
        assert grabs[0] - before == 0, f"{grabs[0] - before} grabs in 1 s"


def test_a_worker_of_two_refused_functions_names_each_refusal_once(
    farm_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Both ERRORs read the same ("function name holds a control character"), and each line
    # named both: "refused function 'a\tb' or 'c\x85d'", twice. The server answers in the
    # order the CAN_DOs went: each ERROR is its CAN_DO's.
    names = ["a\tb", "c\x85d"]
    said = [
        f"job server {farm_server.addr} refused function {name!r} (INVALID_COMMAND: function"
        " name holds a control character): no jobs of it come to this worker from there"
        for name in names
    ]
    with (
        caplog.at_level(logging.WARNING, logger="farm.worker"),
        serving(farm_server.addr, {**dict.fromkeys(names, reverse), "fine": reverse}),
        farm.Client(farm_server.addr) as client,
    ):
        assert client.call("fine", b"abc", timeout=30) == b"cba"  # registered after both
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert refused == said
