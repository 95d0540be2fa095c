"""A job server that stalls for a moment under `farm up` (stopped, or its loop held) is
shown down while it does not answer, and up again at the first scrape after it answers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import scraping
from tests.helpers.farmproc import FarmUp
from tests.helpers.scraping import get
from tests.helpers.waiting import wait_for

POOLS = """
[functions.reverse]
target = "tests.helpers.serving:reverse"
workers = 1
"""


@pytest.mark.timeout(90)
def test_a_server_that_answers_again_is_up_at_the_next_scrape(tmp_path: Path) -> None:
    # The scrape that waited 2 s on a stopped server took over a second, so the endpoint
    # served it again, farm_server_up 0 and no job series, for eleven times as long (22 s)
    # after the server answered again: a stall of two seconds read as a 22-second outage
    # on every graph, in FarmServerDown and in `farm top`. Waiting on the server costs the
    # supervisor no CPU, which is what the reuse of slow responses saves.
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        assert get(scraping.scrape(up.metrics_url), "farm_server_up") == 1
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        os.kill(server, signal.SIGSTOP)
        try:
            stalled = scraping.scrape(up.metrics_url)
        finally:
            os.kill(server, signal.SIGCONT)
        assert get(stalled, "farm_server_up") == 0
        assert not any(name == "farm_jobs_submitted_total" for name, _ in stalled)
        resumed = time.monotonic()

        def answered() -> scraping.Samples | None:
            samples = scraping.scrape(up.metrics_url, check=False)
            return samples if get(samples, "farm_server_up") == 1 else None

        back = wait_for("a scrape that sees the server answer again", answered, timeout=60)
        # A scrape takes milliseconds here; 5 s leaves room for a loaded host.
        assert time.monotonic() - resumed < 5, "the stalled scrape was served again"
        assert get(back, "farm_jobs_submitted_total", function="reverse", priority="normal") == 0
    finally:
        up.stop()
