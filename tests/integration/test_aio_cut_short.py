"""farm.AsyncClient's calls cut short: by an exception from a signal handler as the loop hands
the server's reply to the session, writes a request out or queues one (a submit, a status,
an echo) for the wire (a handler installed with
``signal.signal`` runs wherever the loop's thread is; asyncio logs and swallows what it
raises inside a callback, but lets a KeyboardInterrupt or SystemExit out of the loop, which
the program may run again), by cancellation at each await of a call or a submit, and by a
packet that cannot be built. The client stays in step with its server: the next call gets
its own result.

As in test_client_cut_short.py: SIGUSR1, sent to the main thread from a profile hook as the
read or the write begins, so it lands there every time (not SIGALRM: pytest-timeout's)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, TypeVar

import pytest

import farm
import farm.protocol.codec
from farm.client.admin import admin_query
from farm.client.aio import AsyncClient
from farm.protocol.tasks import Task
from tests.helpers.cutshort import (
    ERRORS,
    UNBUILDABLE,
    held,
    signal_as_queued,
    unbuildable_packets,
)
from tests.helpers.servers import Server
from tests.helpers.serving import reverse, serving
from tests.helpers.waiting import wait_for

T = TypeVar("T")

# Where the exception lands: the session taking the bytes the transport read (JOB_CREATED
# first), the transport's write of the bytes taken from the session (the SUBMIT_JOB), or
# the loop's call of the flush that would take them (ended before its first line).
WHERE = {
    "read": ("receive", "farm/protocol/client.py"),
    "write": ("write", "asyncio/selector_events.py"),
    "flush": ("_flush", "farm/client/aioconn.py"),
    # data_received's own first lines, its counts, before the session's receive (at the
    # loop's time() it reads): a Ctrl-C there dropped the bytes read and kept the
    # connection. (One at the method's very entry, before its first line, no code of the
    # client's can see: docs/client.md.)
    "received": ("time", "asyncio/base_events.py"),
}
#: Where the hook fires only when called from there (the loop's time() is read elsewhere too).
CALLER = {"received": "data_received"}


class TimeLimit(Exception):
    """What the request's alarm raises."""


def _run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(asyncio.wait_for(coro, 20))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("raised", [TimeLimit, KeyboardInterrupt], ids=["alarm", "ctrl-c"])
@pytest.mark.parametrize("at", sorted(WHERE))
def test_a_call_cut_short_by_a_signal_handler_leaves_the_next_calls_their_results(
    farm_server: Server, at: str, raised: type[BaseException]
) -> None:
    # write: the submit taken from the session never reached the transport, and the
    # session awaited its answer all the same (asyncio logged the alarm's exception and
    # went on): the call, and every later one, took the JOB_CREATED of the request after
    # its own and waited until its timeout. read, a KeyboardInterrupt (out of the loop,
    # which the program runs again): the reply read was lost to the session, and so on.
    # flush: the flag saying a flush was due stayed set, and nothing was written again.
    # An alarm's exception in the read asyncio takes for a broken connection: closed.
    name, path = WHERE[at]
    shots: list[str] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        ours = code.co_name == name and code.co_filename.endswith(path)
        if ours and at in CALLER:
            ours = frame.f_back is not None and frame.f_back.f_code.co_name == CALLER[at]
        if event == "call" and not shots and ours:
            shots.append(name)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def limit(signum: int, frame: FrameType | None) -> None:
        raise raised

    client = AsyncClient(farm_server.addr)
    loop = asyncio.new_event_loop()
    previous = signal.signal(signal.SIGUSR1, limit)
    try:
        with serving(farm_server.addr, {"reverse": reverse}):
            assert _run(loop, client.call("reverse", b"warm", timeout=10)) == b"mraw"
            # KeyboardInterrupt: out of the loop. The alarm: swallowed by asyncio in the
            # write (logged), or taken for the connection's fatal error in the read; the
            # call fails as its connection does (before: Timeout, its submit never sent).
            # In the flush, as it began: nothing was taken, and the submit waits for the
            # next flush (another call's), here to its timeout, taken back then.
            expect: type[BaseException] = raised
            if raised is TimeLimit:
                expect = farm.Timeout if at == "flush" else farm.ServerUnavailable
            sys.setprofile(hook)
            try:
                with pytest.raises(expect):
                    _run(loop, client.call("reverse", b"cut short", timeout=3))
            finally:
                sys.setprofile(None)
            assert shots == [name]
            for data in (b"next request", b"the one after"):
                assert _run(loop, client.call("reverse", data, timeout=5)) == data[::-1]
            _run(loop, client.close())
    finally:
        signal.signal(signal.SIGUSR1, previous)
        for task in asyncio.all_tasks(loop):  # a call a KeyboardInterrupt left waiting
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


# Each await of a call (or a submit) a cancel may land on: the connect; the JOB_CREATED, its
# submit still queued in the session (cancelled in the turn it was made) or written; the
# result, once created (a call's only: a submit has returned by then).
STAGES = {"call": ["connecting", "queued", "written", "created"]}
STAGES["submit"] = STAGES["call"][:-1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "stage"), [(how, stage) for how, stages in STAGES.items() for stage in stages]
)
def test_a_call_cancelled_at_each_await_leaves_the_next_calls_their_results(
    farm_server: Server, how: str, stage: str
) -> None:
    # Proven, not fixed: a cancel lands only at an await, where the session's books are
    # whole (a submit still queued is taken back, one written is answered and dropped).
    gate = threading.Event()  # the given-up job's result comes only once the cancel is in

    def gated(job: Any) -> bytes:
        gate.wait(20)
        return b"late"

    async def main(client: AsyncClient) -> None:
        if stage != "connecting":
            assert await client.call("reverse", b"warm", timeout=10) == b"mraw"
        if how == "call":
            job = asyncio.ensure_future(client.call("gated", b"given up", timeout=10))
        else:
            job = asyncio.ensure_future(client.submit("gated", b"given up"))
        await asyncio.sleep(0)  # the job's first step: its connect, or its submit queued
        conn = client._conns.get(farm_server.addr)
        if stage == "connecting":
            assert conn is None, "connected before the cancel"
        else:
            assert conn is not None and conn.session.queued, "the submit not queued"
            while stage != "queued" and conn.session.queued:
                await asyncio.sleep(0)  # the loop's write
            while stage == "created" and not conn.session._running:
                await asyncio.sleep(0.001)  # its JOB_CREATED
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        gate.set()
        for data in (b"next request", b"the one after"):
            assert await client.call("reverse", data, timeout=5) == data[::-1]
        assert (await client.submit("reverse", b"x", background=True)).handle

    async def run() -> None:
        async with AsyncClient(farm_server.addr) as client:
            await asyncio.wait_for(main(client), 30)

    with serving(farm_server.addr, {"reverse": reverse, "gated": gated}):
        asyncio.run(run())


# A question (echo, status) or a submit cut short as its request is queued: after its packet
# went into the session's bytes for the wire, before the session awaits its answer (as in
# test_client_cut_short.py, for farm.Client).
ASKS: dict[str, Callable[[AsyncClient, Task[Any]], Coroutine[Any, Any, object]]] = {
    "echo": lambda client, task: client.echo(b"one"),
    "status of a task": lambda client, task: client.status(task),
    "status by handle": lambda client, task: client.status(task.handle or ""),
    "status by key": lambda client, task: client.status_unique(KEY),
    "submit": lambda client, task: client.submit("nobody", background=True),
}
KEY = "cut-short-key"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ask", sorted(ASKS))
def test_a_request_cut_short_as_it_is_queued_leaves_the_next_calls_their_answers(
    farm_server: Server, ask: str
) -> None:
    # A question's packet queued and its answer not awaited: it went out with the next
    # request, and the echo after it was answered with the cut one's bytes (b"one"); after
    # a status, the echo took the STATUS_RES for its own (a protocol break) and waited.
    shots: list[str] = []
    hook = signal_as_queued(shots, ask)

    def limit(signum: int, frame: FrameType | None) -> None:
        raise TimeLimit

    async def main() -> None:
        async with AsyncClient(farm_server.addr) as client:
            task = await client.submit("nobody", background=True, unique=KEY)  # connected
            sys.setprofile(hook)
            try:
                with pytest.raises(TimeLimit):
                    await asyncio.wait_for(ASKS[ask](client, task), 10)
            finally:
                sys.setprofile(None)
            assert shots == [ask]
            for data in (b"two", b"three"):
                assert await asyncio.wait_for(client.echo(data), 5) == data
            assert (await asyncio.wait_for(client.status_unique(KEY), 5)).known

    previous = signal.signal(signal.SIGUSR1, limit)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGUSR1, previous)


async def _fails_alone(
    client: AsyncClient,
    release: threading.Event,
    failing: Coroutine[Any, Any, object],
    error: type[Exception],
    match: str | None = None,
) -> None:
    """``failing`` (a call whose packet cannot be built) raises ``error`` while a job is
    held on the connection: the held job is answered all the same, and the next calls."""
    first = await client.submit("held")
    try:
        with pytest.raises(error, match=match):
            await asyncio.wait_for(failing, 10)
    finally:
        release.set()
    assert await client.wait(first, timeout=10) == b"held"
    assert await client.call("reverse", b"next", timeout=5) == b"txen"
    assert await asyncio.wait_for(client.echo(b"ping"), 5) == b"ping"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "error",
    ERRORS,
    ids=["struct.error", "MemoryError", "UnicodeEncodeError"],
)
def test_a_submit_whose_packet_cannot_be_built_leaves_the_connections_other_jobs(
    farm_server: Server, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    # Shown, as for farm.Client: the packet is built before anything is queued, and what
    # fails there is that call's error alone, its connection kept (not cut_short).
    unbuildable_packets(monkeypatch, error)
    release = threading.Event()

    async def main() -> None:
        async with AsyncClient(farm_server.addr) as client:
            failing = client.call(UNBUILDABLE, b"x", timeout=5)
            await _fails_alone(client, release, failing, error)

    with serving(farm_server.addr, {"held": held(release), "reverse": reverse}):
        asyncio.run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["submit", "echo"])
def test_a_request_too_large_for_a_packet_is_a_value_error_that_leaves_the_connection(
    farm_server: Server, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    # The limit made small here: 4 GiB is not allocated (tests/unit/test_protocol.py).
    monkeypatch.setattr(farm.protocol.codec, "MAX_BODY", 1000, raising=False)
    release = threading.Event()

    async def main() -> None:
        async with AsyncClient(farm_server.addr) as client:
            failing: Coroutine[Any, Any, object]
            if what == "submit":
                failing = client.submit("nobody", b"x" * 1000, background=True, unique="k")
            else:
                failing = client.echo(b"x" * 1001)
            match = r"(SUBMIT_JOB_BG|ECHO_REQ).* 10\d\d bytes"
            await _fails_alone(client, release, failing, ValueError, match)

    with serving(farm_server.addr, {"held": held(release), "reverse": reverse}):
        asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_connect_cut_short_as_its_first_request_is_queued_leaves_no_connection_open(
    farm_server: Server,
) -> None:
    # The new connection's OPTION_REQ cut as it was queued: the connect failed with the
    # alarm, its transport left open and held by nothing, a connection to the server for as
    # long as the loop ran (one per cut).
    shots: list[str] = []
    hook = signal_as_queued(shots, "option")

    def limit(signum: int, frame: FrameType | None) -> None:
        raise TimeLimit

    def connections() -> int:
        return len(admin_query(farm_server.addr, "workers").splitlines())

    async def main() -> None:
        alone = await asyncio.to_thread(connections)  # the admin query's own, if listed
        async with AsyncClient(farm_server.addr) as client:
            sys.setprofile(hook)
            try:
                with pytest.raises(TimeLimit):
                    await asyncio.wait_for(client.echo(b"one"), 10)
            finally:
                sys.setprofile(None)
            assert shots == ["option"]
            assert await asyncio.wait_for(client.echo(b"two"), 5) == b"two"
            # The abort's close reaches the server soon, not at once; the loop runs on.
            one = lambda: connections() == alone + 1  # noqa: E731
            await asyncio.to_thread(wait_for, "the cut connection closed", one, 5)

    previous = signal.signal(signal.SIGUSR1, limit)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGUSR1, previous)
