"""`farm up` whose log pipe nobody reads: a container's log driver that blocks (its remote
end down), `farm up | less` left paused. The pipe's 64 KiB filled, and the supervisor's next
log line waited on it: the workers' output it relays, `farm ps`, and SIGTERM's stop with it,
so the farm took no more jobs and `docker stop` ended it with SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import farm
from tests.helpers.farmproc import FarmUp

CHATTY = """
def chatty(job):
    print("x" * 2000)  # a job's output: the supervisor logs it as the worker's
    return b"ok"
"""


def test_a_log_pipe_nobody_reads_holds_up_no_job_nor_the_stop(tmp_path: Path) -> None:
    (tmp_path / "chatty.py").write_text(CHATTY)
    pool = '[functions.chatty]\ntarget = "chatty:chatty"\nworkers = 1\n'
    up = FarmUp(tmp_path, pool, start=False)
    unread, written = os.pipe()  # the read end is held open and never read
    up.log.close()
    up.log = os.fdopen(written, "wb")
    try:
        up.start()
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            for _ in range(100):  # 200 KB of output: three pipes' worth
                assert client.call("chatty", b"", timeout=10) == b"ok"
        assert {p["function"] for p in up.ps()} >= {"supervisor", "chatty"}
        up.signal(signal.SIGTERM)
        assert up.proc.wait(timeout=10) == 0  # docker stop's grace
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
        try:
            up.stop()
        finally:
            os.close(unread)
