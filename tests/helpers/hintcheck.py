"""A job that lasts until `farm submit`'s no-worker hint has looked (farm.cli.watch), so a
test sees what the hint said of a job that was running all the while."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import farm.cli.watch
from tests.helpers.waiting import wait_for


def held_past_the_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Callable[[Any], bytes], list[threading.Timer]]:
    """The hint looks 50 ms into the submit (NO_WORKER_AFTER) in a threading.Timer, which
    is watched here; the function returned, run as the job, answers b"done" once the first
    such check has run. Also returned: the checks made so far (clear it to wait for the
    next one)."""
    checks: list[threading.Timer] = []

    class Timer(threading.Timer):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            checks.append(self)

    monkeypatch.setattr(farm.cli.watch, "NO_WORKER_AFTER", 0.05)
    monkeypatch.setattr(threading, "Timer", Timer)

    def held(job: Any) -> bytes:
        wait_for("the hint's check", lambda: checks and checks[0].finished.is_set())
        return b"done"

    return held, checks
