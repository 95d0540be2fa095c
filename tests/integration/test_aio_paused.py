"""farm.AsyncClient in a process that got no CPU for a while (SIGSTOP here; a paused VM, a
starved host): a result that came in time is read before its wait is called timed out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest

import farm
from farm.protocol.tasks import JobEnded
from tests.helpers import ROOT
from tests.helpers.servers import stop_process
from tests.helpers.serving import working
from tests.helpers.waiting import wait_for

TIMEOUT = 2  # the call's, in seconds

CALLER = """
import asyncio, sys
import farm

async def main() -> None:
    async with farm.AsyncClient(sys.argv[1]) as c:
        timeout = float(sys.argv[2])
        try:
            if sys.argv[3] == "call":
                result = await c.call("gated", b"", timeout=timeout)
            else:
                async for event in c.stream("gated", b"", timeout=timeout):
                    result = event.task.result
            print("result", result, flush=True)
        except farm.Timeout as exc:
            print("timeout", exc, flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["call", "stream"])
def test_a_result_that_came_while_the_caller_was_stopped_is_not_a_timeout(
    farm_server, how: str
) -> None:
    """The job ended within the call's timeout while the caller's process was stopped;
    resumed past the timeout, its loop's select came back empty (CPython's, interrupted by
    the stop, past its deadline) and the timer fired first: Timeout, the result dropped,
    where farm.Client takes one look past its deadline and returns it."""
    started, release = threading.Event(), threading.Event()

    def gated(job: Any) -> bytes:
        started.set()
        release.wait(30)
        return b"done"

    worker = farm.Worker(farm_server.addr)
    worker.register("gated", gated)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with working(worker):
        caller = subprocess.Popen(
            [sys.executable, "-c", CALLER, farm_server.addr, str(TIMEOUT), how],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert started.wait(20)
            # Stopped as it waits in its loop's select, where a pause mostly finds a process
            # (one stopped mid-turn selects afterwards with no wait, and reads).
            waiting = psutil.Process(caller.pid)
            wait_for("the caller to wait", lambda: waiting.status() == psutil.STATUS_SLEEPING)
            stop_process(caller.pid)
            try:
                release.set()
                wait_for("the worker to answer", lambda: worker.jobs_done == 1)
                time.sleep(TIMEOUT + 0.5)  # the pause: the call's timeout passes in it
            finally:
                os.kill(caller.pid, signal.SIGCONT)
            out, _ = caller.communicate(timeout=30)
        finally:
            if caller.poll() is None:
                caller.kill()
                caller.wait()
    assert out.strip() == "result b'done'", out


@pytest.mark.timeout(60)
def test_a_stream_whose_news_keeps_coming_to_a_slower_reader_times_out(farm_server) -> None:
    """Past its deadline a stream takes one look and yields what was queued then, no more:
    with news queued faster than it was read, each pass past the deadline found some and
    went on, so stream(timeout=1) ran to the job's end (12 s in the review's run) and never
    raised Timeout."""
    release = threading.Event()

    def chatty(job: Any) -> bytes:
        while not release.wait(0.005):
            job.send_data(b"x" * 100)
        return b"done"

    async def read_slowly(addr: str) -> tuple[str, int]:
        seen = 0
        async with farm.AsyncClient(addr) as client:
            try:
                async for event in client.stream("chatty", b"", timeout=1.0):
                    if isinstance(event, JobEnded):
                        return "ended", seen
                    seen += 1
                    await asyncio.sleep(0.02)  # the reader is slower than the news
            except farm.Timeout:
                return "timeout", seen
        return "gone", seen

    worker = farm.Worker(farm_server.addr)
    worker.register("chatty", chatty)
    with working(worker):
        try:
            how, seen = asyncio.run(asyncio.wait_for(read_slowly(farm_server.addr), 30))
        finally:
            release.set()
    assert how == "timeout" and seen > 0, (how, seen)
