"""Worker functions for failure tests, run by `farm worker tests.helpers.crashy:NAME`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def hold(job: Any) -> bytes:
    """Announce this worker's pid in DIR/started-PID, then wait for DIR/go; return the pid.

    The job data is DIR. The test kills or releases the worker while it holds the job.
    """
    folder = Path(job.data.decode())
    (folder / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 20
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never said go")
        time.sleep(0.01)  # a file is the only channel from the test to this process
    return str(os.getpid()).encode()


def die(job: Any) -> bytes:
    """Kill the worker process that runs it: a poison job."""
    os.kill(os.getpid(), signal.SIGKILL)
    return b"unreachable"


def record(job: Any) -> bytes:
    """Append the job's unique to the file named by $FARM_TEST_RECORD: proof it ran."""
    with open(os.environ["FARM_TEST_RECORD"], "ab") as f:
        f.write(job.unique.encode() + b"\n" if isinstance(job.unique, str) else job.unique + b"\n")
    return b""
