"""A large store's replay at `farm up`'s start, under a systemd that waits TimeoutStartSec
(60 s in the unit) for READY=1: 1.28 M jobs took 40 s. The supervisor extends the start
(EXTEND_TIMEOUT_USEC) while the server says its replay goes on, and only then."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.bigstore import large_store
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

#: Enough for seconds of replay (8 µs a job on a fast 2-core VM, where 60,000 jobs took
#: 0.5 s, no more than the server's first progress line; 30 to 120 µs on slower ones),
#: made in under a second.
JOBS = 200_000
EXTEND = "EXTEND_TIMEOUT_USEC=15000000"


def job_server(up: FarmUp) -> psutil.Process:
    def found() -> psutil.Process | None:
        kids = psutil.Process(up.proc.pid).children()
        return next((p for p in kids if is_server(p)), None)

    return wait_for("the job server started", found)


def is_server(proc: psutil.Process) -> bool:
    """``python -m farm.server`` until its setproctitle, ``farm: server ...`` after: a
    poll that first looks after the title is set must know it too (CI failed on that)."""
    try:
        line = " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return False
    return "farm.server" in line or line.startswith("farm: server")


def test_the_start_is_extended_while_the_store_replays_and_only_then(tmp_path: Path) -> None:
    store = tmp_path / "queue.db"
    large_store(store, JOBS)
    up = FarmUp(tmp_path, "", extra_env={"XDG_STATE_HOME": str(tmp_path)}, store=store)
    try:
        server = job_server(up)
        up.expect_notify(EXTEND, timeout=30)
        assert "READY=1" not in up.messages
        # Stopped mid-replay, the server says nothing more, as a hung one: an extension
        # read before the stop may still come (the supervisor sends one a second at
        # most); after that, none.
        server.suspend()
        try:
            time.sleep(1.5)  # what was in flight at the stop: read, sent, received
            drain(up)
            before = len(up.messages)
            time.sleep(2.5)  # a span with no progress: no extension may come in it
            drain(up)
            assert EXTEND not in up.messages[before:], up.messages[before:]
        finally:
            server.resume()
        said = up.expect_notify("READY=1", timeout=60)
        assert f"replayed {JOBS} background jobs" in up.read_log()
        assert EXTEND not in said[said.index("READY=1") :]
    finally:
        assert up.stop() == 0


def drain(up: FarmUp) -> None:
    """Every datagram the supervisor sent so far, into ``up.messages``."""
    up.notify.setblocking(False)
    try:
        while True:
            up.messages.extend(up.notify.recv(4096).decode().split("\n"))
    except BlockingIOError:
        pass
