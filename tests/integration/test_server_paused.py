"""A job server that got no CPU for a while (SIGSTOP here; a VM paused, a starved host):
what its peers sent meanwhile is read before the deadlines that passed are judged."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import farm
from tests.helpers.servers import stop_process
from tests.helpers.serving import working
from tests.helpers.waiting import wait_for

TIMEOUT = 2  # the job's CAN_DO_TIMEOUT, in seconds


def test_a_job_answered_while_the_server_was_stopped_is_not_failed_as_timed_out(
    farm_server,
) -> None:
    """The worker answered within its timeout, while the server did not run; resumed past
    the timeout, the server fired the job's deadline before it read the answer (uvloop runs
    due timers before it polls): the client got JobFailed, the result was dropped."""
    started, release = threading.Event(), threading.Event()

    def quick(job: Any) -> bytes:
        started.set()
        release.wait(30)
        return b"done"

    worker = farm.Worker(farm_server.addr)
    worker.register("quick", quick, timeout=TIMEOUT)
    with working(worker), farm.Client(farm_server.addr) as c:
        task = c.submit("quick", b"")
        assert started.wait(10)
        stop_process(farm_server.proc.pid)
        try:
            release.set()
            wait_for("the worker to answer", lambda: worker.jobs_done == 1)
            time.sleep(TIMEOUT + 0.5)  # the pause: the job's deadline passes in it
        finally:
            os.kill(farm_server.proc.pid, signal.SIGCONT)
        assert c.wait(task, 10) == b"done"
