"""What a caller is told of a job's WORK_WARNING, against farm's server with a raw worker:
the warning a farm worker sends before it fails the job (past kill_rss_mb) is quoted by the
JobFailed of farm.Client and AsyncClient and the WorkerLost of a farm.Executor call, each
with the same hedge (tasks.last_warning), and `farm submit` prints each as it comes."""

from __future__ import annotations

import asyncio
import os
import pickle
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

import farm
from farm.client.aio import AsyncClient
from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.aiojobs import run_async
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server, unix_farm_server

pytestmark = pytest.mark.timeout(60)

#: What a farm worker past kill_rss_mb sends (Worker.abandon): a line, its newline sent.
WHY = "RSS 424 MiB over kill_rss_mb 300; worker exits"
#: What follows the quoted warning: the server's retries are not seen by a client, so the
#: warning may be an earlier try's; the server logs a job it fails (timed out, poison).
ELSE = (
    " (it may be from an earlier try: the server retries unseen, and its log says if it"
    " failed the job)"
)
#: Why the server failed a job whose two tries' workers died (--job-retries 2).
DIED_TWICE = "its worker died running it 2 times (job_retries = 2)"


def asleep(addr: str, function: str) -> Peer:
    """A raw worker of ``function``, asleep: the server's NOOP says a job came."""
    peer = Peer(addr)
    peer.send(T.CAN_DO, function)
    peer.send(T.PRE_SLEEP)
    return peer


def take_job(peer: Peer) -> bytes:
    """The job the server woke ``peer`` for: its handle."""
    peer.expect(T.NOOP, timeout=20)
    peer.send(T.GRAB_JOB_UNIQ)
    return peer.expect(T.JOB_ASSIGN_UNIQ).args[0]


def fail_after(peer: Peer, handle: bytes, *warnings: bytes) -> None:
    for warning in warnings:
        peer.send(T.WORK_WARNING, handle, warning)
    peer.send(T.WORK_FAIL, handle)


def test_a_job_failed_after_a_warning_says_it(farm_server: Server) -> None:
    # WORK_FAIL carries no reason: the JobFailed guessed ("its worker sent WORK_FAIL ... or
    # the server failed it") while the worker had said why just before.
    peer = asleep(farm_server.addr, "hog")
    with farm.Client(farm_server.addr) as client:
        task = client.submit("hog", b"x")
        fail_after(peer, take_job(peer), b"slow going", f"{WHY}\n".encode())
        with pytest.raises(farm.JobFailed) as info:
            client.wait(task, 10)
    peer.close()
    error = info.value
    assert type(error) is farm.JobFailed
    assert str(error) == f"job {task.handle} (hog) failed; its last warning: {WHY}{ELSE}"
    assert error.warning == WHY  # the last one, without the newline a farm worker ends it with
    again = pickle.loads(pickle.dumps(error))  # as an Executor's call or a pool carries it
    assert (type(again), str(again), again.warning) == (farm.JobFailed, str(error), WHY)


def test_a_job_failed_with_no_warning_says_where_work_fail_comes_from(
    farm_server: Server,
) -> None:
    peer = asleep(farm_server.addr, "quiet")
    with farm.Client(farm_server.addr) as client:
        task = client.submit("quiet", b"x")
        fail_after(peer, take_job(peer))
        with pytest.raises(farm.JobFailed, match="its worker sent WORK_FAIL") as info:
            client.wait(task, 10)
    peer.close()
    assert info.value.warning is None


def test_a_warning_before_the_servers_retries_is_quoted_with_a_hedge() -> None:
    # Try 1 warned and its worker died; try 2's worker died too, and the server failed the
    # job after job_retries tries: the JobFailed said only "its last warning: 3 bad rows
    # skipped", a news of try 1 the client cannot tell from a reason, and not the server.
    # The server says why now (fail-reason), and the warning follows as some try's news.
    srv = start_farm_server("--job-retries", "2")
    try:
        with farm.Client(srv.addr) as client:
            task = client.submit("hog", b"x")
            first = asleep(srv.addr, "hog")
            first.send(T.WORK_WARNING, take_job(first), b"3 bad rows skipped\n")
            first.close()  # after its warning, which the server read first
            second = asleep(srv.addr, "hog")
            take_job(second)
            second.close()
            with pytest.raises(farm.JobFailed) as info:
                client.wait(task, 20)
    finally:
        srv.stop()
    failed = (
        f"job {task.handle} (hog) failed: the server failed it: {DIED_TWICE}; its last"
        " warning: 3 bad rows skipped (it may be from an earlier try)"
    )
    assert str(info.value) == failed
    assert info.value.warning == "3 bad rows skipped" and info.value.reason == DIED_TWICE


def test_an_executor_call_lost_after_the_servers_retries_hedges_the_warning(
    tmp_path: Path,
) -> None:
    # As above, for a call: its WorkerLost said "the worker running job H failed it: 3 bad
    # rows skipped", try 1's news given as the reason, the claim JobFailed no longer made.
    with unix_farm_server("--job-retries", "2") as srv:
        addr = f"unix:{srv.unix}"
        with farm.Executor(1, servers=addr, key_file=str(tmp_path / "executor.key")) as ex:
            future = ex.submit(len, "abc")
            first = asleep(addr, "farm.python")
            handle = take_job(first).decode()
            first.send(T.WORK_WARNING, handle, b"3 bad rows skipped\n")
            first.close()  # after its warning, which the server read first
            second = asleep(addr, "farm.python")
            take_job(second)
            second.close()
            error = future.exception(timeout=20)
    assert type(error) is farm.WorkerLost
    lost = (
        f"job {handle} (farm.python) failed: the server failed it: {DIED_TWICE}; its last"
        " warning: 3 bad rows skipped (it may be from an earlier try)"
    )
    assert str(error) == f"{lost}; the call's outcome is unknown"


@run_async
async def test_async_client_says_the_last_warning_too(farm_server: Server) -> None:
    peer = asleep(farm_server.addr, "hog")
    async with AsyncClient(farm_server.addr) as client:
        call = asyncio.ensure_future(client.call("hog", b"x", timeout=20))
        handle = await asyncio.to_thread(take_job, peer)
        await asyncio.to_thread(fail_after, peer, handle, f"{WHY}\n".encode())
        with pytest.raises(farm.JobFailed) as info:
            await call
    peer.close()
    assert str(info.value).endswith(f"failed; its last warning: {WHY}{ELSE}")
    assert info.value.warning == WHY


def stderr_line(proc: subprocess.Popen[bytes], within: float) -> bytes:
    """The next line ``proc`` writes to stderr, waited for at most ``within`` seconds."""
    assert proc.stderr is not None
    fd, got = proc.stderr.fileno(), b""
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not got.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), f"no line on stderr within {within}s: {got!r}"
            byte = os.read(fd, 1)  # one at a time: nothing past the line is taken from the pipe
            assert byte, f"stderr closed: {got!r}"
            got += byte
    return got


def test_farm_submit_prints_each_warning_as_it_comes(farm_server: Server) -> None:
    # `farm submit` passed no on_warning: the worker's reason never showed, and its last
    # line said only where a WORK_FAIL may come from.
    peer = asleep(farm_server.addr, "hog")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from farm.cli import main; main()"]
        + ["submit", "hog", "x", "--server", farm_server.addr],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        handle = take_job(peer)
        peer.send(T.WORK_WARNING, handle, b"half way \x1b[31mred\n")
        # Shown while the job still runs: the job has not ended yet.
        said = stderr_line(proc, 20)
        assert said == b"farm: job hog warned: half way \\x1b[31mred\n"
        fail_after(peer, handle, f"{WHY}\n".encode())
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        peer.close()
    assert proc.returncode == 1 and out == b""
    lines = err.decode().splitlines()
    assert lines[0] == f"farm: job hog warned: {WHY}"
    failed = f"job {handle.decode()} (hog) failed; its last warning: {WHY}{ELSE}"
    assert lines[1] == f"farm: {failed}"  # it names the job and its function
    assert len(lines) == 2, err
