"""A foreground job whose server died mid-job: resubmitted once to another server when it has a
unique key (libgearman's rule), failed without one, and not sent a third time; farm.Client and
AsyncClient alike."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest

import farm
from farm.client.serverpick import key_slot
from farm.protocol.client import Task
from farm.protocol.worker import WorkerState
from tests.helpers.servers import Server, start_like, stop_process
from tests.helpers.serving import serving
from tests.helpers.waiting import wait_for


@pytest.fixture
def two_servers(any_server):
    other = start_like(any_server)
    yield any_server, other
    other.stop()


class _SlowOnce:
    """A worker function whose first run waits for ``release``; records every run. ``news``:
    what each run sends first ("data": a WORK_DATA naming the run, "status": a WORK_STATUS)."""

    def __init__(self, news: str = "") -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.runs: list[bytes] = []
        self.news = news

    def __call__(self, job: Any) -> bytes:
        self.runs.append(job.data)
        if self.news == "data":
            job.send_data(b"run %d" % len(self.runs))
        elif self.news == "status":
            job.send_status(len(self.runs), 9)
        if len(self.runs) == 1:
            self.started.set()
            self.release.wait(5)
        return b"ok"


def _holder(two_servers, key: str):
    """The server a job with this unique key starts at (the client's stable choice)."""
    addrs = [s.addr for s in two_servers]
    return {s.addr: s for s in two_servers}[addrs[key_slot(key, 2)]]


def _mid_job_death(
    two_servers, unique: str | None, news: str = ""
) -> tuple[dict[str, Any], list[bytes]]:
    """A call whose server dies while its first run waits (after its ``news``, _SlowOnce's):
    its outcome ("result" or "error", and "heard": what its on_data and on_status saw)."""
    a, b = two_servers
    addrs = [a.addr, b.addr]
    holder = _holder(two_servers, unique or "x")
    slow = _SlowOnce(news)
    started, release, runs = slow.started, slow.release, slow.runs
    heard: list[Any] = []
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = c.call(
                "slow",
                b"p",
                unique=unique,
                timeout=10,
                on_data=heard.append,
                on_status=lambda n, d: heard.append((n, d)),
            )
        except farm.FarmError as exc:
            outcome["error"] = exc

    with farm.Client(addrs) as c, serving(addrs, {"slow": slow}):
        if unique is None:  # no key: make the first job land on the server we kill
            c._wire.picker._rotation = addrs.index(holder.addr)
        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(5)
        wait_for("its news heard", lambda: heard or not news)
        holder.stop()
        release.set()
        caller.join(10)
    if heard:
        outcome["heard"] = heard
    return outcome, runs


def test_job_with_unique_key_is_resubmitted_once_when_its_server_dies(two_servers) -> None:
    outcome, runs = _mid_job_death(two_servers, "resubmit-me")
    assert outcome == {"result": b"ok"}
    assert runs == [b"p", b"p"]


def test_a_keyed_job_whose_data_had_begun_to_arrive_is_not_run_again(two_servers) -> None:
    # Sent again, it ran a second time and its data came on after the first run's, to the same
    # on_data with no sign (libgearman and PHP fail such a call): the caller cannot tell which
    # run's data it holds.
    outcome, runs = _mid_job_death(two_servers, "streamed", news="data")
    assert runs == [b"p"]
    assert outcome["heard"] == [b"run 1"]
    assert isinstance(outcome.get("error"), farm.ServerUnavailable), outcome
    assert "its data had begun to arrive" in str(outcome["error"])


def test_a_keyed_job_that_sent_only_its_status_is_resubmitted(two_servers) -> None:
    outcome, runs = _mid_job_death(two_servers, "status-only", news="status")
    assert outcome == {"result": b"ok", "heard": [(1, 9), (2, 9)]}
    assert runs == [b"p", b"p"]


def test_job_without_unique_key_fails_when_its_server_dies(two_servers) -> None:
    outcome, runs = _mid_job_death(two_servers, None)
    assert isinstance(outcome.get("error"), farm.ServerUnavailable)
    assert "went away" in str(outcome["error"])


def test_a_resubmitted_job_whose_second_server_dies_too_fails_and_goes_out_no_more(
    two_servers,
) -> None:
    # Once, not again: a third server is there to take it, and never sees it. Each server has
    # its own worker, so a run says which server handed it out.
    a, b = two_servers
    c_server = start_like(a)
    servers = {s.addr: s for s in (a, b, c_server)}
    began: queue.Queue[str] = queue.Queue()
    release = threading.Event()
    runs: list[str] = []

    def slow_on(addr: str) -> Any:
        def slow(job: Any) -> bytes:
            runs.append(addr)
            began.put(addr)
            if len(runs) <= 2:  # the two runs whose servers die under them
                release.wait(10)
            return b"ok"

        return slow

    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = c.call("slow", b"p", unique="lost-twice", timeout=20)
        except farm.FarmError as exc:
            outcome["error"] = exc

    try:
        with contextlib.ExitStack() as stack:
            for addr in servers:
                stack.enter_context(serving(addr, {"slow": slow_on(addr)}))
            c = stack.enter_context(farm.Client(list(servers)))
            caller = threading.Thread(target=call)
            caller.start()
            first = began.get(timeout=10)
            servers[first].stop()
            second = began.get(timeout=10)  # resubmitted, to another server
            assert second != first
            servers[second].stop()
            release.set()
            caller.join(20)
            assert not caller.is_alive()
    finally:
        release.set()
        c_server.stop()
    assert isinstance(outcome.get("error"), farm.ServerUnavailable), outcome
    assert f"job server {second} went away" in str(outcome["error"])
    assert runs == [first, second]


def test_async_client_follows_the_same_rule(two_servers) -> None:
    """AsyncClient: a unique-keyed job whose server dies mid-job moves to the other server."""

    a, b = two_servers
    addrs = [a.addr, b.addr]
    holder = _holder(two_servers, "async-key")
    slow = _SlowOnce()
    started, release, runs = slow.started, slow.release, slow.runs

    async def main() -> bytes:
        client = farm.AsyncClient(addrs)
        try:
            call = asyncio.ensure_future(client.call("slow", b"p", unique="async-key", timeout=10))
            assert await asyncio.to_thread(started.wait, 10), "the job never started"
            holder.stop()
            release.set()
            return await call
        finally:
            await client.close()

    with serving(addrs, {"slow": slow}):
        assert asyncio.run(main()) == b"ok"
    assert runs == [b"p", b"p"]


def test_async_stream_of_a_keyed_job_whose_data_had_begun_is_not_run_again(two_servers) -> None:
    holder = _holder(two_servers, "async-streamed")
    slow = _SlowOnce("data")
    seen: list[bytes] = []

    async def main() -> None:
        client = farm.AsyncClient([s.addr for s in two_servers])
        try:
            async for event in client.stream("slow", b"p", unique="async-streamed", timeout=10):
                seen.append(getattr(event, "data", type(event).__name__))
                if len(seen) == 1:
                    await asyncio.to_thread(holder.stop)
                    slow.release.set()
        finally:
            await client.close()

    with (
        serving([s.addr for s in two_servers], {"slow": slow}),
        pytest.raises(farm.ServerUnavailable, match="its data had begun to arrive"),
    ):
        try:
            asyncio.run(main())
        finally:
            assert seen == [b"run 1"] and slow.runs == [b"p"]


def test_async_close_during_a_resubmit_ends_the_call(two_servers) -> None:
    # close() came while a unique-keyed job lost with its server was connecting to the
    # other: the connect raised RuntimeError("closed") in the resubmitting task, which died,
    # and the call waited for ever.

    holder = _holder(two_servers, "close-key")

    async def main() -> None:
        client = farm.AsyncClient([s.addr for s in two_servers])
        resubmit = client._resubmit

        def then_close(task: Any, conn: Any) -> None:
            resubmit(task, conn)
            asyncio.get_running_loop().create_task(client.close())  # before it connects

        # A method, as the client's connections hold it weakly (a plain function is refused).
        client._resubmit = types.MethodType(lambda _, *args: then_close(*args), client)  # type: ignore[method-assign]
        task = await client.submit("nobody-serves-this", b"p", unique="close-key")
        assert len(client._conns) == 1, "only its server is connected: the other connects later"
        call = asyncio.ensure_future(client.wait(task, timeout=30))
        await asyncio.to_thread(holder.stop)
        with pytest.raises(farm.ServerUnavailable, match="the farm.AsyncClient was closed"):
            await asyncio.wait_for(call, 30)

    asyncio.run(main())


BIG = 16 << 20  # past what the kernel's socket buffers take from a server that reads none


def _died_mid_send(holder: Server, sent_part: Callable[[], bool]) -> None:
    """Once ``sent_part()`` says the submit is stuck part-way into ``holder`` (stopped, not
    reading), the server dies: SIGKILL, and SIGCONT for the kill to land."""
    wait_for("the submit stuck part-way", sent_part)
    holder.proc.kill()
    os.kill(holder.proc.pid, signal.SIGCONT)


def _asleep_on_both(worker: Any) -> bool:
    """No grab out to the server about to stop: it would hold the worker's next one."""
    return len(worker._servers) == 2 and all(
        s.session.state is WorkerState.SLEEPING for s in worker._servers
    )


def test_a_plain_job_not_sent_whole_when_its_server_died_goes_to_the_next(two_servers) -> None:
    # A packet never written whole cannot have created a job, yet it failed as lost
    # "(not confirmed: it may have been created)", and a caller could only guess.
    a, b = two_servers
    addrs = [a.addr, b.addr]
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = c.call("size", b"z" * BIG, timeout=30)
        except farm.FarmError as exc:
            outcome["error"] = exc

    with serving(addrs, {"size": lambda j: b"%d" % len(j.data)}) as w, farm.Client(addrs) as c:
        wait_for("the worker asleep on both", lambda: _asleep_on_both(w))
        c._wire.picker._rotation = 0  # no key: the first job goes to the server that dies
        stop_process(a.proc.pid)
        caller = threading.Thread(target=call)
        caller.start()
        _died_mid_send(a, lambda: bool(getattr(c._wire.conns.get(a.addr), "unsent", b"")))
        caller.join(30)
    assert outcome == {"result": b"%d" % BIG}


def test_async_a_plain_job_not_sent_whole_when_its_server_died_goes_to_the_next(
    two_servers,
) -> None:
    a, b = two_servers
    addrs = [a.addr, b.addr]

    async def main() -> bytes:
        client = farm.AsyncClient(addrs)
        try:
            client._picker._rotation = 0  # as above
            call = asyncio.ensure_future(client.call("size", b"z" * BIG, timeout=30))
            paused = lambda: getattr(client._conns.get(a.addr), "writing_paused", False)  # noqa: E731
            await asyncio.to_thread(_died_mid_send, a, paused)
            return await call
        finally:
            await client.close()

    with serving(addrs, {"size": lambda j: b"%d" % len(j.data)}) as w:
        wait_for("the worker asleep on both", lambda: _asleep_on_both(w))
        stop_process(a.proc.pid)
        assert asyncio.run(main()) == b"%d" % BIG


class _TimeLimit(Exception):
    """What a web request's alarm raises."""


def test_async_a_resubmit_cut_short_as_it_is_queued_ends_the_call(two_servers) -> None:
    # An exception from a signal handler (a request's alarm) as a keyed job lost with its
    # server was queued on the other: the resubmitting task died with it, its packet queued
    # there and its answer not awaited; the call waited to its timeout, and the packet went
    # out with that connection's next request, whose answer it took.
    holder = _holder(two_servers, "cut-key")
    other = next(s for s in two_servers if s is not holder)
    shots: list[str] = []

    def hook(frame: types.FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event != "c_call" or shots or code.co_name != "_enqueue":
            return
        session, request = frame.f_locals["self"], frame.f_locals["request"]
        ours = session.server == other.addr and isinstance(request, Task)  # not its OPTION_REQ
        if ours and getattr(arg, "__self__", None) is session._awaiting:
            shots.append(session.server)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def limit(signum: int, frame: types.FrameType | None) -> None:
        raise _TimeLimit

    async def main() -> None:
        async with farm.AsyncClient([s.addr for s in two_servers]) as client:
            task = await client.submit("nobody-serves-this", b"p", unique="cut-key")
            sys.setprofile(hook)
            try:
                await asyncio.to_thread(holder.stop)
                with pytest.raises(farm.ServerUnavailable, match="an exception cut short"):
                    await client.wait(task, timeout=10)
            finally:
                sys.setprofile(None)
            assert shots == [other.addr]
            for data in (b"two", b"three"):
                assert await asyncio.wait_for(client.echo(data), 5) == data
            assert (await client.submit("nobody", background=True)).server == other.addr

    previous = signal.signal(signal.SIGUSR1, limit)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGUSR1, previous)
