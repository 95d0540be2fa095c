"""``status(handle)``, ``status_unique`` and ``echo`` with a server ahead that accepts
connections and never answers (hung, or SIGSTOPped: its kernel still takes them): the next
server is asked after 0.25 s without an answer, as farm.Executor staggers its admin ask, and
the client's timeout bounds the whole ask, not each server's part of it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import farm
from farm.client.serverpick import key_slot
from farm.protocol.client import JobStatus
from tests.helpers.servers import Server, free_port
from tests.helpers.stalled import unanswered_listener


@contextmanager
def silent_servers(count: int) -> Iterator[list[str]]:
    """Servers whose kernel takes connections that they never accept: nothing answers."""
    listeners = []
    try:
        for _ in range(count):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            listeners.append(listener)
        yield [f"127.0.0.1:{listener.getsockname()[1]}" for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()


def within(seconds: float, ask: Callable[[], object]) -> object:
    """What ``ask`` returns, run in a thread: a failure, not a hung test, if it waits on."""
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(ask()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds}s: a silent server held it"
    return outcome[0]


@pytest.mark.timeout(30)
def test_status_of_a_handle_asks_past_a_silent_server(farm_server: Server) -> None:
    # The silent server, first, was waited on for the client's whole timeout, for ever
    # without one (the default), though the next server knew the job.
    with farm.Client(farm_server.addr) as submitter:
        task = submitter.submit("nobody-serves-this", b"x", background=True, unique="hung-1")
    with silent_servers(1) as (silent,):
        client = farm.Client([silent, farm_server.addr])
        client._wire.picker._rotation = 0  # the silent one first
        status = within(10, lambda: client.status(task.handle or ""))
        assert isinstance(status, JobStatus) and status.known
        # Keyed: its key's server first, the silent one here.
        key = next(k for k in (f"hung-{i}" for i in range(100)) if key_slot(k, 2) == 0)
        with farm.Client(farm_server.addr) as submitter:
            submitter.submit("nobody-serves-this", b"x", background=True, unique=key)
        status = within(10, lambda: client.status_unique(key))
        assert isinstance(status, JobStatus) and status.known
        client.close()


@pytest.mark.timeout(30)
def test_async_status_of_a_handle_asks_past_a_silent_server(farm_server: Server) -> None:
    async def main(silent: str) -> JobStatus:
        async with farm.AsyncClient(farm_server.addr) as submitter:
            task = await submitter.submit("nobody-serves-this", b"x", background=True)
        async with farm.AsyncClient([silent, farm_server.addr]) as client:
            client._picker._rotation = 0  # the silent one first
            async with asyncio.timeout(10):
                return await client.status(task.handle or "")

    with silent_servers(1) as (silent,):
        assert asyncio.run(main(silent)).known


@pytest.mark.serial
@pytest.mark.timeout(30)
def test_the_clients_timeout_bounds_a_status_ask_not_each_server_s_part(
    farm_server: Server,
) -> None:
    # Each server asked had the whole timeout: two silent ones ahead of one that does not
    # know the handle took twice the timeout.
    with silent_servers(2) as silent:
        client = farm.Client([*silent, farm_server.addr], timeout=2)
        client._wire.picker._rotation = 0  # the silent ones first
        t0 = time.monotonic()
        status = within(10, lambda: client.status("H:nowhere:1"))
        took = time.monotonic() - t0
        assert isinstance(status, JobStatus) and not status.known
        assert took < 3.5, f"{took:.1f}s: each silent server took the client's timeout"
        client.close()


@pytest.mark.timeout(30)
def test_echo_asks_past_a_silent_server(farm_server: Server) -> None:
    # Any server may answer an echo: the silent one first held it for the client's whole
    # timeout, for ever without one, in farm.Client and AsyncClient alike.
    async def echo(silent: str) -> bytes:
        async with farm.AsyncClient([silent, farm_server.addr]) as client:
            client._picker._rotation = 0  # the silent one first
            async with asyncio.timeout(10):
                return await client.echo(b"x")

    with silent_servers(1) as (silent,):
        client = farm.Client([silent, farm_server.addr])
        client._wire.picker._rotation = 0  # the silent one first
        assert within(10, lambda: client.echo(b"x")) == b"x"
        client.close()
        assert asyncio.run(echo(silent)) == b"x"


@pytest.mark.timeout(30)
def test_status_and_echo_ask_past_a_server_whose_connect_nothing_answers(
    farm_server: Server,
) -> None:
    # A host that drops our SYNs, first, held farm.Client's status and echo for its whole
    # connect (connect_timeout, without a timeout): the 0.25 s counted from the connect
    # made, where AsyncClient asked the next server 0.25 s after it began connecting.
    with farm.Client(farm_server.addr) as submitter:
        task = submitter.submit("nobody-serves-this", b"x", background=True)
    with unanswered_listener() as hung:
        client = farm.Client([hung, farm_server.addr], connect_timeout=120)
        client._wire.picker._rotation = 0  # the hung one first
        assert within(10, lambda: client.echo(b"x")) == b"x"
        client._wire.picker._rotation = 0
        status = within(10, lambda: client.status(task.handle or ""))
        assert isinstance(status, JobStatus) and status.known
        client.close()


@pytest.mark.timeout(30)
def test_a_connect_cut_at_the_stagger_is_tried_again_with_its_share() -> None:
    # With nothing else to ask, the hung server's connect, given up at 0.25 s for the
    # next server, is made again in the time left, and its failure is said.
    with unanswered_listener() as hung:
        refused = f"127.0.0.1:{free_port()}"
        client = farm.Client([hung, refused], timeout=2)
        client._wire.picker._rotation = 0  # the hung one first

        def echo() -> BaseException | bytes:
            try:
                return client.echo(b"x")
            except farm.ServerUnavailable as exc:
                return exc

        failed = within(10, echo)
        assert isinstance(failed, farm.ServerUnavailable), failed
        assert f"{refused}: Connection refused" in str(failed)
        assert f"{hung}: timed out" in str(failed)
        client.close()
