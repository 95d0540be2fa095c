"""Several servers: a dead one is skipped, all dead says which were tried, a job whose
server died mid-job is resubmitted once when it has a unique key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import signal
import socket
import threading
import types
from typing import Any

import pytest

import farm
from farm.client.serverpick import key_slot
from tests.helpers.servers import free_port, free_ports, start_like, stop_process
from tests.helpers.serving import reverse, serving
from tests.helpers.waiting import wait_for


@pytest.fixture
def two_servers(any_server):
    other = start_like(any_server)
    yield any_server, other
    other.stop()


def test_a_killed_server_is_skipped_and_all_down_names_each(two_servers) -> None:
    a, b = two_servers
    addrs = [a.addr, b.addr]
    with farm.Client(addrs) as c, serving(addrs, {"reverse": reverse}):
        assert {c.call("reverse", b"%d" % i) for i in range(4)} == {b"0", b"1", b"2", b"3"}
        assert len(c._wire.conns) == 2  # jobs were spread over both
        a.stop()
        for i in range(6):
            assert c.call("reverse", b"ab%d" % i, timeout=5) == b"%dba" % i
        b.stop()
        with pytest.raises(farm.ServerUnavailable) as info:
            c.call("reverse", b"x", timeout=5)
    assert a.addr in str(info.value) and b.addr in str(info.value)


def test_unreachable_list_raises_server_unavailable() -> None:
    dead = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with farm.Client(dead) as c, pytest.raises(farm.ServerUnavailable) as info:
        c.call("reverse", b"x")
    assert all(addr in str(info.value) for addr in dead)


class _SlowOnce:
    """A worker function whose first run waits for ``release``; records every run."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.runs: list[bytes] = []

    def __call__(self, job: Any) -> bytes:
        self.runs.append(job.data)
        if len(self.runs) == 1:
            self.started.set()
            self.release.wait(5)
        return b"ok"


def _holder(two_servers, key: str):
    """The server a job with this unique key starts at (the client's stable choice)."""
    addrs = [s.addr for s in two_servers]
    return {s.addr: s for s in two_servers}[addrs[key_slot(key, 2)]]


def _mid_job_death(two_servers, unique: str | None) -> tuple[Any, list[bytes]]:
    a, b = two_servers
    addrs = [a.addr, b.addr]
    holder = _holder(two_servers, unique or "x")
    slow = _SlowOnce()
    started, release, runs = slow.started, slow.release, slow.runs

    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = c.call("slow", b"p", unique=unique, timeout=10)
        except farm.FarmError as exc:
            outcome["error"] = exc

    with farm.Client(addrs) as c, serving(addrs, {"slow": slow}):
        if unique is None:  # no key: make the first job land on the server we kill
            c._wire.picker._rotation = addrs.index(holder.addr)
        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(5)
        holder.stop()
        release.set()
        caller.join(10)
    return outcome, runs


def test_job_with_unique_key_is_resubmitted_once_when_its_server_dies(two_servers) -> None:
    outcome, runs = _mid_job_death(two_servers, "resubmit-me")
    assert outcome == {"result": b"ok"}
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
    import asyncio

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


def test_a_server_that_stopped_answering_is_tried_last_after_one_timeout(two_servers) -> None:
    # Rotation sent every other job to a hung (SIGSTOPped) server, each waiting out the
    # client's timeout; as a refused server, it is now tried last for a while.
    a, b = two_servers
    addrs = [a.addr, b.addr]
    fns = {"reverse": reverse}
    # A worker each: one worker of both servers may be waiting on the stopped one's answer.
    with farm.Client(addrs, timeout=0.5) as c, serving([a.addr], fns), serving([b.addr], fns):
        assert {c.call("reverse", b"%d" % i) for i in range(2)} == {b"0", b"1"}  # both up
        stop_process(b.proc.pid)
        try:
            late = 0
            for i in range(6):
                try:
                    assert c.call("reverse", b"x%d" % i) == b"%dx" % i
                except farm.Timeout:
                    late += 1
            assert late <= 1, f"{late} of 6 calls went to the stopped server"
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)


def test_a_map_timed_out_on_a_hung_server_tries_it_last_for_a_while(two_servers) -> None:
    # A call timed out on a hung server tried it last for a while, a map did not: every
    # map sent half its jobs there again, and timed out again, naming no server.
    a, b = two_servers
    with farm.Client([a.addr, b.addr], timeout=1) as c, serving([b.addr], {"reverse": reverse}):
        stop_process(a.proc.pid)
        try:
            with pytest.raises(farm.Timeout, match=f"{a.addr} did not even create its jobs"):
                list(c.map("reverse", [b"ab", b"cd"]))
            assert list(c.map("reverse", [b"ef", b"gh"])) == [b"fe", b"hg"]
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)


def test_async_calls_timed_out_on_a_hung_server_try_it_last_for_a_while(two_servers) -> None:
    # farm.Client's rule (above); AsyncClient sent every other job to the hung server.
    import asyncio

    a, b = two_servers

    async def main() -> list[bytes]:
        async with farm.AsyncClient([a.addr, b.addr]) as client:
            calls = [client.call("reverse", b"%d" % i, timeout=1) for i in range(2)]
            first = await asyncio.gather(*calls, return_exceptions=True)
            assert sum(isinstance(r, farm.Timeout) for r in first) == 1, first
            return [await client.call("reverse", b"x%d" % i, timeout=1) for i in range(4)]

    with serving([b.addr], {"reverse": reverse}):
        stop_process(a.proc.pid)
        try:
            assert asyncio.run(main()) == [b"0x", b"1x", b"2x", b"3x"]
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)


def test_an_async_stream_timed_out_on_a_hung_server_tries_it_last_too(two_servers) -> None:
    # As AsyncClient.call does (above); a stream's Timeout also names its job and server as
    # every other Timeout does, not just "job reverse not done within 0.5s".
    a, b = two_servers

    async def main() -> list[bytes]:
        async with farm.AsyncClient([a.addr, b.addr]) as client:
            client._picker._rotation = 0  # the hung one first
            with pytest.raises(farm.Timeout, match=f"\\(not confirmed.* on {a.addr} not done"):
                async for _ in client.stream("reverse", b"s", timeout=0.5):
                    pass
            return [await client.call("reverse", b"x%d" % i, timeout=5) for i in range(2)]

    with serving([b.addr], {"reverse": reverse}):
        stop_process(a.proc.pid)
        try:
            assert asyncio.run(main()) == [b"0x", b"1x"]
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)


def test_jobs_keyed_by_their_payload_spread_over_the_servers(two_servers) -> None:
    # unique="-" (the payload is the key): each job went to the server of the literal "-",
    # so one server took every such job while the other stood idle.
    addrs = [s.addr for s in two_servers]
    with farm.Client(addrs) as c:
        tasks = [
            c.submit("dash-fn", b"payload %d" % i, unique="-", background=True) for i in range(16)
        ]
        assert {t.server for t in tasks} == set(addrs)
        again = c.submit("dash-fn", b"payload 3", unique="-", background=True)
        assert (again.server, again.handle) == (tasks[3].server, tasks[3].handle), "coalesced"

    async def submit_all() -> set[str | None]:
        async with farm.AsyncClient(addrs) as ac:
            keyed = [
                ac.submit("dash-fn", b"async %d" % i, unique="-", background=True)
                for i in range(16)
            ]
            return {t.server for t in await asyncio.gather(*keyed)}

    assert asyncio.run(submit_all()) == set(addrs)


def test_status_unique_asks_on_when_its_keys_server_does_not_know_it(two_servers) -> None:
    # A job goes to another server when its key's own is down; once that one is back,
    # status_unique took its "unknown" for an answer.
    a, b = two_servers
    addrs = [a.addr, b.addr]
    key = next(k for k in (f"k{i}" for i in range(100)) if key_slot(k, 2) == 0)
    gate = threading.Event()
    fns = {"hold": lambda job: gate.wait(30) and b"done"}
    with farm.Client(addrs, timeout=10) as c, serving([b.addr], fns):
        stop_process(a.proc.pid)
        try:
            c._wire.picker.mark_down(a.addr)  # as a refused or silent server is
            task = c.submit("hold", b"", unique=key, background=True)
            assert task.server == b.addr
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        c._wire.picker.mark_up(a.addr)  # its key's server first again
        wait_for("the job to run", lambda: c.status(task).running)
        assert c.status_unique(key).known
        gate.set()
    with farm.Client(addrs) as c:
        with pytest.raises(TypeError, match="unique key"):
            c.status_unique(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty"):
            c.status_unique("")


def test_status_of_a_task_asks_the_server_that_created_it(two_servers) -> None:
    # gearmand's handles count from 1 on every server: two of them on one host hand out
    # "H:host:1" each (docs/client.md), so a bare handle may name a job on each.
    a, b = two_servers
    gate = threading.Event()
    with farm.Client(a.addr) as on_a:
        queued = on_a.submit("hold", b"x", background=True)
    with serving([b.addr], {"hold": lambda job: gate.wait(30) and b"done"}):
        with farm.Client(b.addr) as on_b:
            running = on_b.submit("hold", b"y", background=True)
        with farm.Client([a.addr, b.addr], timeout=10) as c:
            wait_for("b's job to run", lambda: c.status(running).running)
            assert tuple(c.status(queued))[:2] == (True, False), "a's job waits: no worker"
        gate.set()
    if a.kind == "gearmand":
        assert queued.handle == running.handle


def test_a_new_call_reconnects_though_a_job_was_pending_when_the_server_restarted(
    any_server,
) -> None:
    # The connection held a job in flight (no worker for it), so it was reused as "busy"
    # without a look: the new job went onto the dead socket and failed with the old one.
    port = int(any_server.addr.rpartition(":")[2])
    with farm.Client([any_server.addr], timeout=10) as c:
        pending = c.submit("nobody-serves-this", b"x")
        assert c.echo(b"sync") == b"sync"  # the submit is on the wire
        any_server.stop()
        again = start_like(any_server, port=port)
        try:
            with serving([again.addr], {"reverse": reverse}):
                assert c.call("reverse", b"abc") == b"cba"
            with pytest.raises(farm.ServerUnavailable, match="went away"):
                c.wait(pending, timeout=5)  # the job in flight was lost with its server
        finally:
            again.stop()


def test_a_new_call_reconnects_though_a_late_reply_was_unread_when_the_server_restarted(
    any_server,
) -> None:
    # A call that timed out left its job's WORK_COMPLETE unread in the socket; the look for a
    # closed connection peeked that byte, took the connection for alive, and the next call
    # after a server restart went onto the dead socket: ServerUnavailable ("went away").
    release = threading.Event()
    slow = {"slow": lambda job: release.wait(30) and b"late"}
    with farm.Client([any_server.addr]) as c:
        with serving([any_server.addr], slow) as w:
            with pytest.raises(farm.Timeout):
                c.call("slow", b"x", timeout=0.2)
            release.set()
            wait_for("the job to end", lambda: w.jobs_done == 1)
            sock = c._wire.conns[any_server.addr].sock
            assert select.select([sock], [], [], 10)[0], "its WORK_COMPLETE reached the client"
        any_server.stop()
        again = start_like(any_server, port=any_server.port)
        try:
            with serving([again.addr], {"reverse": reverse}):
                assert c.call("reverse", b"abc", timeout=10) == b"cba"
        finally:
            again.stop()


def test_echo_tries_a_server_that_refused_it_last_for_a_while(any_server) -> None:
    # Jobs did (a refused server is tried last for DOWN_FOR), echo and status did not: each
    # other one went to the refused server first (with a connect that hangs, a second each).
    dead = f"127.0.0.1:{free_port()}"
    with farm.Client([dead, any_server.addr], connect_timeout=1) as c:
        assert c.echo(b"a") == b"a"
        firsts = {c._wire.picker.order("")[0] for _ in range(4)}
        assert firsts == {any_server.addr}


def test_async_close_during_a_resubmit_ends_the_call(two_servers) -> None:
    # close() came while a unique-keyed job lost with its server was connecting to the
    # other: the connect raised RuntimeError("closed") in the resubmitting task, which died,
    # and the call waited for ever.
    import asyncio

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


def test_a_call_that_timed_out_before_its_submit_left_takes_it_back() -> None:
    # Against a server that accepts and never reads, each retry's submit stayed queued: the
    # memory grew by its payload per retry, and every job ran had the server woken up.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # the kernel completes the connection; nothing ever reads it
    addr = f"127.0.0.1:{listener.getsockname()[1]}"
    payload = b"x" * (32 << 20)  # past what the socket buffers take
    try:
        with farm.Client(addr, timeout=0.3) as c:
            with pytest.raises(farm.Timeout):
                c.call("big", payload)
            first = len(c._wire.conns[addr].unsent)
            assert first > 0, "the first submit is still partly unsent"
            for _ in range(3):
                with pytest.raises(farm.Timeout):
                    c.call("big", payload)
                assert len(c._wire.conns[addr].unsent) == first, "a retry's submit piled up"
    finally:
        listener.close()
