"""Several servers: a dead one is skipped, all dead says which were tried, a server that
stopped answering is tried last for a while, status and echo ask on (a job whose server died
mid-job: test_client_resubmit.py)."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import threading

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


def test_status_of_a_task_whose_server_died_is_unknown_whatever_was_asked_first(
    two_servers,
) -> None:
    # The first status() of a task on a killed server raised ServerUnavailable (its lost
    # connection seen only in the refused reconnect); asked after a live server's task, the
    # same question answered known=False, as farm.AsyncClient answers it each time.
    a, b = two_servers
    with farm.Client([a.addr, b.addr], timeout=5) as c:
        tasks = [c.submit("nobody-serves-this", b"%d" % i) for i in range(4)]
        on_a = [t for t in tasks if t.server == a.addr]
        assert on_a and len(on_a) < len(tasks), [t.server for t in tasks]
        a.stop()
        for task in on_a:
            assert c.status(task) == (False, False, 0, 0)
        on_b = next(t for t in tasks if t.server == b.addr)
        assert c.status(on_b)[:2] == (True, False)


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
                # Not more: the kernel may take a little more of the first meanwhile (its
                # buffers grow on a loaded machine), never a second payload.
                assert len(c._wire.conns[addr].unsent) <= first, "a retry's submit piled up"
    finally:
        listener.close()
