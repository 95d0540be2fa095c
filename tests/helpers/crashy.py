"""Worker functions for failure tests, run by `farm worker tests.helpers.crashy:NAME`."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.helpers.waiting import wait_for


def hold(job: Any) -> bytes:
    """Announce this worker's pid in DIR/started-PID, then wait for DIR/go; return the pid.

    The job data is DIR. The test kills or releases the worker while it holds the job.
    """
    folder = Path(job.data.decode())
    (folder / f"started-{os.getpid()}").touch()
    wait_for("the test to say go", (folder / "go").exists, 20)  # a file: the only channel in
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


def fork_back(job: Any) -> bytes:
    """Fork, the child coming back out of the job (tests.helpers.calls.fork_and_come_back;
    the job data says how); the worker's answer is the parent's: "parent STATUS"."""
    from tests.helpers.calls import fork_and_come_back

    side, status = fork_and_come_back(job.data.decode())
    return f"{side} {status}".encode()


def leave(job: Any) -> bytes:
    """``sys.exit(N)``, N the job's data: a worker author's mistake (argparse does it too)."""
    import sys

    sys.exit(int(job.data))


def as_dict(job: Any) -> Any:
    """Return a dict, which a worker function may not: a worker author's mistake."""
    return {"data": job.text}
