"""farm.Client against farm's server and gearmand: calls, background, priorities, coalescing,
status and progress, WORK_DATA, exceptions, failures, scheduled jobs, arguments and names.
Timeouts and limits are in test_client_timeouts.py, abandoned tasks and maps in
test_client_maps.py."""

from __future__ import annotations

import asyncio
import datetime
import socket
import threading
import time
from typing import Any

import pytest

import farm
from farm.protocol import PacketType as PT
from tests.helpers.peers import Peer
from tests.helpers.serving import reverse, serving, working
from tests.helpers.waiting import wait_for


def test_call_returns_the_result_for_bytes_and_str(any_server) -> None:
    with serving(any_server.addr, {"reverse": reverse}), farm.Client(any_server.addr) as c:
        assert c.call("reverse", b"hello") == b"olleh"
        assert c.call("reverse", "héllo") == "héllo".encode()[::-1]
        assert c.call("reverse", b"") == b""
        assert c.echo(b"ping\0pong") == b"ping\0pong"


def test_background_job_runs_and_submit_returns_its_handle(any_server) -> None:
    seen = threading.Event()

    def record(job: Any) -> None:
        assert job.data == b"payload"
        seen.set()

    with farm.Client(any_server.addr) as c, serving(any_server.addr, {"record": record}):
        task = c.submit("record", b"payload", background=True)
        assert task.handle and task.handle.startswith("H:") and task.server == any_server.addr
        assert seen.wait(5)
        with pytest.raises(ValueError):
            c.wait(task)


def test_priorities_high_before_normal_before_low(any_server) -> None:
    order: list[bytes] = []
    with farm.Client(any_server.addr) as c:
        for prio in ("low", "normal", "high"):
            c.submit("order", prio, background=True, priority=prio)
        with serving(any_server.addr, {"order": lambda job: order.append(job.data)}) as w:
            wait_for("three jobs done", lambda: w.jobs_done == 3)
    assert order == [b"high", b"normal", b"low"]


def test_equal_unique_keys_coalesce_into_one_run(any_server) -> None:
    runs: list[bytes] = []

    def count(job: Any) -> bytes:
        runs.append(job.data)
        return b"ran " + job.data

    with farm.Client(any_server.addr) as a, farm.Client(any_server.addr) as b:
        ta = a.submit("count", b"first", unique="same-key")
        tb = b.submit("count", b"second", unique="same-key")
        assert ta.handle == tb.handle
        st = a.status_unique("same-key")
        assert st.known and not st.running
        with serving(any_server.addr, {"count": count}):
            assert a.wait(ta, 5) == b"ran first"
            assert b.wait(tb, 5) == b"ran first"
    assert runs == [b"first"]


def test_status_and_progress_callbacks(any_server) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(job: Any) -> bytes:
        job.send_status(1, 2)
        started.set()
        release.wait(5)
        job.send_status(2, 2)
        return b"done"

    progress: list[tuple[int, int]] = []
    with farm.Client(any_server.addr) as c, serving(any_server.addr, {"slow": slow}):
        task = c.submit("slow", b"")
        assert started.wait(5)
        status = wait_for("status 1/2", lambda: (s := c.status(task)).numerator == 1 and s)
        assert status == farm.client.JobStatus(True, True, 1, 2)
        assert c.status(task.handle) == status
        release.set()
        task.owner = farm.client.blocking.Callbacks(
            lambda n, d: progress.append((n, d)), None, None
        )
        assert c.wait(task, 5) == b"done"
        assert (2, 2) in progress
        assert not c.status(task).known


def test_work_data_streams_in_order_then_the_result(any_server) -> None:
    def stream(job: Any) -> bytes:
        for i in range(5):
            job.send_data(b"part%d" % i)
        job.send_warning("almost")
        job.send_status(5, 5)
        return b"end"

    chunks: list[bytes] = []
    warnings: list[bytes] = []
    statuses: list[tuple[int, int]] = []
    with farm.Client(any_server.addr) as c, serving(any_server.addr, {"stream": stream}):
        result = c.call(
            "stream",
            b"",
            on_data=chunks.append,
            on_warning=warnings.append,
            on_status=lambda n, d: statuses.append((n, d)),
        )
    assert result == b"end"
    assert chunks == [b"part%d" % i for i in range(5)]
    assert warnings == [b"almost"] and statuses == [(5, 5)]


def test_worker_exception_raises_job_exception_and_worker_goes_on(any_server) -> None:
    def boom(job: Any) -> bytes:
        raise ValueError("bad input")

    fns = {"boom": boom, "reverse": reverse}
    with farm.Client(any_server.addr) as c, serving(any_server.addr, fns) as w:
        if any_server.kind == "farm":
            with pytest.raises(farm.JobException) as info:
                c.call("boom", b"x")
            assert info.value.text == "ValueError: bad input"
        else:  # gearmand mangles WORK_FAIL for clients without exceptions: the worker fails it
            with pytest.raises(farm.JobFailed, match="its function raised"):
                c.call("boom", b"x")
        assert c.call("reverse", b"ab") == b"ba"
        assert w.jobs_done == 2


def test_work_fail_raises_job_failed(any_server) -> None:
    raw = Peer(any_server.addr)
    raw.send(PT.CAN_DO, "fails")
    with farm.Client(any_server.addr) as c:
        task = c.submit("fails", b"x")
        raw.send(PT.GRAB_JOB_UNIQ)
        assign = raw.expect(PT.JOB_ASSIGN_UNIQ)
        raw.send(PT.WORK_FAIL, assign.args[0])
        with pytest.raises(farm.JobFailed):
            c.wait(task, 5)
    raw.close()


def test_scheduled_job_uses_submit_job_epoch(farm_server) -> None:
    done = threading.Event()
    fns = {"later": lambda job: done.set()}
    with farm.Client(farm_server.addr) as c, serving(farm_server.addr, fns):
        task = c.submit("later", b"", when=time.time() + 0.3)
        assert task.background and task.handle
        assert done.wait(5)


def test_a_scheduled_job_does_not_run_before_its_time(farm_server) -> None:
    """The wire carries whole seconds: a ``when`` with a fraction is rounded up, not down
    (down, it ran up to a second early; a fraction in the past of this second, at once)."""
    ran: list[float] = []
    fns = {"later": lambda job: ran.append(time.time())}
    with farm.Client(farm_server.addr) as c, serving(farm_server.addr, fns):
        when = int(time.time()) + 1.9  # 0.9 s past a whole second: rounding down loses it
        c.submit("later", b"", when=when)
        soon = datetime.datetime.fromtimestamp(int(time.time()) + 1.9)
        c.submit("later", b"", when=soon)
        wait_for("both scheduled jobs to run", lambda: len(ran) == 2, timeout=10)
    assert min(ran) >= when - 0.05, f"ran {when - min(ran):.2f}s before its time"
    with pytest.raises(ValueError, match="finite"):
        farm.Client(farm_server.addr).submit("later", b"", when=float("nan"))


def test_a_schedule_out_of_range_is_refused_before_it_costs_the_other_jobs(farm_server) -> None:
    # when= in milliseconds (time.time() * 1000, as JavaScript counts) or before 1970: farm's
    # server refuses the epoch and closes the connection, and every job in flight on it
    # failed with "went away" (an AsyncClient's other coroutines' calls, a map's jobs).
    release = threading.Event()

    def held(job: Any) -> bytes:
        release.wait(20)
        return job.data

    with serving(farm_server.addr, {"held": held}), farm.Client(farm_server.addr) as c:
        task = c.submit("held", b"mine")
        try:
            for when in (time.time() * 1000, -5, datetime.datetime(1969, 7, 20)):
                with pytest.raises(ValueError, match="out of range"):
                    c.submit("later", b"", when=when)
        finally:
            release.set()
        assert c.wait(task, 10) == b"mine"


def test_can_do_timeout_fails_the_job_on_farm(farm_server) -> None:
    release = threading.Event()
    worker = farm.Worker(farm_server.addr)
    worker.register("stuck", lambda job: release.wait(10) and b"late", timeout=1)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with farm.Client(farm_server.addr) as c, pytest.raises(farm.JobFailed):
            c.call("stuck", b"", timeout=8)
    finally:
        release.set()
        worker.stop()
        thread.join(10)


def test_a_worker_timeout_under_a_second_is_refused_not_raised_to_one(farm_server) -> None:
    # 0.5 went out as 1000 ms (farm's server reads a number under 1000 as seconds, gearmand
    # every one as ms) while job.timeout said 0.5: the job failed after 1 s, unsaid.
    release = threading.Event()
    told: list[float | None] = []

    def stuck(job: farm.worker.Job) -> bytes:
        told.append(job.timeout)
        release.wait(10)
        return b"late"

    worker = farm.Worker(farm_server.addr)
    floor = r"^stuck: timeout must be a number of seconds from 1 to 31622400, not 0\.5: it goes"
    with pytest.raises(ValueError, match=floor):
        worker.register("stuck", stuck, timeout=0.5)
    worker.register("stuck", stuck, timeout=1.5)  # the floor and above: sent as asked
    with working(worker), farm.Client(farm_server.addr) as c:
        try:
            started = time.monotonic()
            with pytest.raises(farm.JobFailed):
                c.call("stuck", b"", timeout=8)
            assert time.monotonic() - started >= 1.4, "1500 ms, not 1 s"
        finally:
            release.set()  # before the worker's stop, which waits for the job
    assert told == [1.5]


def test_bad_arguments_get_clear_errors() -> None:
    with farm.Client("127.0.0.1:1") as c:
        with pytest.raises(TypeError, match="data must be bytes, bytearray, memoryview or str"):
            c.call("f", 42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="priority must be one of"):
            c.call("f", b"", priority="urgent")
        with pytest.raises(ValueError, match="unique key"):
            c.call("f", b"", unique="u" * 64)
        with pytest.raises(TypeError, match="function must be a str"):
            c.submit(b"f", b"")  # type: ignore[arg-type]
        with pytest.raises(farm.ServerUnavailable, match="127.0.0.1:1"):
            c.call("f", b"")
    with pytest.raises(ValueError, match="port"):
        farm.Client("host:99999")


def takes_task(method: str, given: str) -> str:
    """What ``wait`` and ``abandon`` given no Task raise, as a pattern."""
    return rf"^{method}\(\) takes the Task that submit\(\) returned, not {given}$"


def test_wait_and_abandon_take_the_task_not_its_handle(farm_server) -> None:
    # A handle string (what status() takes) raised AttributeError from inside them: 'str'
    # object has no attribute 'background' (wait), 'server' (abandon).
    with serving(farm_server.addr, {"reverse": reverse}), farm.Client(farm_server.addr) as c:
        task = c.submit("reverse", b"abc")
        assert task.handle is not None
        with pytest.raises(TypeError, match=takes_task("wait", "str")):
            c.wait(task.handle)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=takes_task("abandon", "str")):
            c.abandon(task.handle)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=takes_task("wait", "NoneType")):
            c.wait(None)  # type: ignore[arg-type]
        assert c.wait(task) == b"cba"  # the task itself, left as it was by the refusals


def test_str_data_keeps_the_bytes_its_surrogates_escape(farm_server) -> None:
    # Names and unique keys go out as the bytes os.fsdecode's surrogates stand for; data
    # raised a bare UnicodeEncodeError that did not say it was the data.
    raw = b"caf\xe9 \xff\xfe"
    text = raw.decode("utf-8", "surrogateescape")  # as os.fsdecode makes it
    functions = {"echo": lambda job: job.data, "echo-text": lambda job: text}

    async def async_call() -> bytes:
        async with farm.AsyncClient(farm_server.addr) as ac:
            return await ac.call("echo", text, timeout=30)

    with serving(farm_server.addr, functions), farm.Client(farm_server.addr) as c:
        assert c.call("echo", text) == raw
        assert c.call("echo-text", b"") == raw  # a worker's str result, the same way
        assert asyncio.run(async_call()) == raw
        # A surrogate that stands for no byte: refused before anything is sent, named.
        refused = r"^data holds a surrogate that stands for no byte \('\\ud800' at index 1\)"
        with pytest.raises(ValueError, match=refused):
            c.call("echo", "x\ud800y")


def test_servers_default_from_environment(monkeypatch, no_local_farm) -> None:
    # Else: the local farm's socket, and 127.0.0.1:4730 where none answers (no_local_farm:
    # a farm running at this machine's defaults answered, and the test failed).
    monkeypatch.setenv("GEARMAN_SERVERS", "a:1, b,unix:/tmp/s")
    assert farm.Client().servers == ["a:1", "b:4730", "unix:/tmp/s"]
    monkeypatch.delenv("GEARMAN_SERVERS")
    assert farm.Client().servers == ["127.0.0.1:4730"]


def test_a_function_name_and_unique_key_that_are_not_utf8_go_out_as_their_bytes(
    any_server, peer_factory
) -> None:
    # A PHP worker may serve a function named in any bytes, and PHP's clients send any
    # bytes as a key (a raw digest); farm.Worker hands such a key to its job as
    # os.fsdecode does. Given back to farm.Client or AsyncClient (a follow-up job on the
    # same key, status_unique), the same str raised UnicodeEncodeError ("surrogates not
    # allowed"): no farm client could reach such a job. They go out as the bytes they were.
    name, key = b"f\xff", b"\xff\xfe-key"
    as_text = {raw: raw.decode("utf-8", "surrogateescape") for raw in (name, key)}
    worker = peer_factory(any_server.addr)
    worker.send(PT.CAN_DO, name)
    with farm.Client(any_server.addr) as c:
        task = c.submit(as_text[name], b"x", background=True, unique=as_text[key])
        worker.send(PT.GRAB_JOB_UNIQ)
        handle, function, unique, _ = worker.expect(PT.JOB_ASSIGN_UNIQ).args
        assert (bytes(function), bytes(unique)) == (name, key)
        assert c.status_unique(as_text[key]).known
        assert c.status(task).running

        async def from_asyncio() -> bool:
            async with farm.AsyncClient(any_server.addr) as ac:
                again = await ac.submit(as_text[name], b"y", background=True, unique=as_text[key])
                assert again.handle == task.handle  # the same key: the same job
                return (await ac.status_unique(as_text[key])).known

        assert asyncio.run(from_asyncio())
        worker.send(PT.WORK_COMPLETE, handle, b"")
        worker.send(PT.ECHO_REQ, b"done")
        worker.expect(PT.ECHO_RES)
        assert not c.status_unique(as_text[key]).known
    with farm.Client(any_server.addr) as c, pytest.raises(ValueError, match="unique"):
        c.submit("f", unique="\ud800")  # a surrogate that stands for no byte


def test_a_server_that_speaks_another_protocol_is_named_so() -> None:
    # An address that is not a job server's (a web server's port): both clients said the
    # server "went away while holding job ...", as if a job server had died mid-job, where
    # farm.Worker and farm.Executor say it broke the protocol.
    listener = socket.create_server(("127.0.0.1", 0))
    addr = f"127.0.0.1:{listener.getsockname()[1]}"

    def answer_http() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")

    # Each way a client meets it says so, with why: a keyed job (resubmitted, and there is
    # no other server) said "tried X (died)" or "went away", a query "connection to X lost".
    broke = "broke the protocol: expected a binary packet"
    threading.Thread(target=answer_http, daemon=True).start()
    try:
        with farm.Client(addr, timeout=10) as c:
            for ask in (
                lambda: c.call("reverse", "x"),
                lambda: c.call("reverse", "x", unique="k"),
                lambda: c.echo(),
                lambda: c.status_unique("k"),
            ):
                with pytest.raises(farm.ServerUnavailable, match=broke):
                    ask()

        async def from_asyncio() -> None:
            async with farm.AsyncClient(addr) as ac:
                for ask in (
                    lambda: ac.call("reverse", "x"),
                    lambda: ac.call("reverse", "x", unique="k"),
                    lambda: ac.echo(),
                    lambda: ac.status_unique("k"),
                ):
                    with pytest.raises(farm.ServerUnavailable, match=broke):
                        await asyncio.wait_for(ask(), 10)

        asyncio.run(from_asyncio())
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone would not)
        listener.close()
