"""Job functions for the monitoring tests, run by a real `farm up` (tests/monitoring).

What a job does is said by its data, so one pool serves every case a test counts:
``ok`` answers, ``raise`` raises (WORK_EXCEPTION, its traceback logged by the worker),
``sleep`` outlives any pool timeout, ``hold:DIR`` says it started (DIR/started-PID)
and waits for DIR/go, ``fd`` writes a line on descriptor 2 past sys.stderr (as a C
library or a child program does); anything else comes back reversed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.helpers.waiting import wait_for


class Refused(ValueError):
    """What a ``raise`` job raises, so a test can find it in the logs."""


def work(job: Any) -> bytes:
    text = job.data.decode()
    if text == "raise":
        raise Refused("asked to fail")
    if text == "fd":
        os.write(2, b"written on fd 2 past sys.stderr\n")
        return b"written"
    if text == "sleep":
        time.sleep(60)  # stands in for a stuck job: the pool's timeout ends it first
    if text.startswith("hold:"):
        folder = Path(text[len("hold:") :])
        (folder / f"started-{os.getpid()}").touch()
        wait_for("the test to say go", (folder / "go").exists, 30)  # a file: the only channel
        return b"held"
    return text[::-1].encode()
