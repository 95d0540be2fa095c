"""A farm Worker asleep on a server (PRE_SLEEP sent) asks for a job again after
``SLEEP_RECHECK`` with no NOOP. gearmand wakes its sleepers when a job is submitted, not when
a scheduled one (SUBMIT_JOB_EPOCH) comes due: such a job waited, unrun, for the next submit
of any job, for ever on a quiet server."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

import farm
import farm.workertimers
from tests.helpers.serving import serving, working


@pytest.mark.timeout(60)
def test_a_scheduled_job_on_gearmand_runs_once_due_with_no_other_submit(
    gearmand, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(farm.workertimers, "SLEEP_RECHECK", 0.5)
    ran = threading.Event()
    with farm.Client(gearmand.addr) as c, serving(gearmand.addr, {"later": lambda j: ran.set()}):
        due = time.time() + 1.5
        c.submit("later", b"", when=due)
        assert ran.wait(20), "the scheduled job did not run: the worker slept on"
    assert time.time() >= due - 1  # whole seconds on the wire


@pytest.mark.timeout(60)
def test_a_server_dropped_for_an_unanswered_grab_is_not_grabbed_again_each_recheck(
    farm_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Reconnected asleep on purpose (``silent``), it was woken by the recheck like any
    # sleeper: a grab that held the worker for connect_timeout, each SLEEP_RECHECK.
    monkeypatch.setattr(farm.workertimers, "SLEEP_RECHECK", 0.3)
    hung = socket.socket()  # takes connections and bytes (the kernel's), answers nothing
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    hung_addr = f"127.0.0.1:{hung.getsockname()[1]}"
    worker = farm.Worker([farm_server.addr, hung_addr], connect_timeout=0.3)
    worker.register("echo", lambda j: j.data)
    try:
        with (
            caplog.at_level(logging.INFO, logger="farm.worker"),
            working(worker),
            farm.Client(farm_server.addr) as c,
        ):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # calls for 10 rechecks' time
                assert c.call("echo", b"x", timeout=10) == b"x"
    finally:
        hung.close()
    drops = [r for r in caplog.records if "did not answer a grab in time" in r.getMessage()]
    assert len(drops) == 1, [r.getMessage() for r in drops]
