"""A farm Worker whose process got no CPU for a while (SIGSTOP here; a paused VM, a
starved host): an answer its server sent meanwhile is read, not taken for a hung server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

import farm
from farm.client.admin import admin_query
from tests.helpers import ROOT
from tests.helpers.servers import start_farm_server, stop_process
from tests.helpers.waiting import wait_for

WORKER = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import farm
w = farm.Worker(sys.argv[1:], connect_timeout=2)
w.register("f", lambda job: print("ran", job.handle, flush=True) or b"ok")
w.work(stop_after=1)
"""


def test_a_grab_answered_while_the_worker_was_stopped_is_read_not_given_up() -> None:
    """A worker of two servers waits connect_timeout for a grab's answer. Its server (slow
    then: stopped) answered while the worker was stopped; resumed past the deadline, its
    select came back empty (CPython's, interrupted by the stop) and the worker dropped the
    server as hung, the job it had been handed put back as a lost worker's."""
    slow, other = start_farm_server(), start_farm_server()
    worker = None
    try:
        with farm.Client(slow.addr) as c:
            c.submit("f", b"", background=True)
        stop_process(slow.proc.pid)  # the grab waits: its kernel takes it, nothing answers
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, slow.addr, other.addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        wait_for("its registration", lambda: "f" in admin_query(other.addr, "status", timeout=5))
        waiting = psutil.Process(worker.pid)  # its grab sent, it waits for the answers
        wait_for("the worker to wait", lambda: waiting.status() == psutil.STATUS_SLEEPING)
        stop_process(worker.pid)
        os.kill(slow.proc.pid, signal.SIGCONT)  # the server answers the grab: the job
        time.sleep(2.5)  # the pause: the grab's deadline (connect_timeout) passes in it
        os.kill(worker.pid, signal.SIGCONT)
        out, _ = worker.communicate(timeout=30)
        assert "did not answer a grab in time" not in out, out
        assert out.count("ran ") == 1, out
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        slow.stop()
        other.stop()
