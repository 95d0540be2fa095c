"""A farm Worker asleep on a server (PRE_SLEEP sent) asks for a job again after
``SLEEP_RECHECK`` with no NOOP. gearmand wakes its sleepers when a job is submitted, not when
a scheduled one (SUBMIT_JOB_EPOCH) comes due: such a job waited, unrun, for the next submit
of any job, for ever on a quiet server."""

from __future__ import annotations

import threading
import time

import pytest

import farm
import farm.workertimers
from tests.helpers.serving import serving


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
