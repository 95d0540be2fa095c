"""Through a real `farm up`: jobs of two functions, one raising, one outliving its pool's
timeout and one whose worker is killed with kill -9 mid-job; then the endpoint's counters
equal what happened, exactly, and the histograms counted every answer."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import farm
from farm.errors import JobException, JobFailed
from tests.helpers.farmproc import FarmUp
from tests.helpers.scraping import Samples, get, scrape, series
from tests.helpers.waiting import wait_for

POOLS = """
[functions.alpha]
target = "tests.helpers.monitored:work"
workers = 2

[functions.beta]
target = "tests.helpers.monitored:work"
workers = 1
timeout = 1
"""

CAUSES = ("crash", "recycle", "rss", "timeout", "killed", "boot_failure")


def by_priority(m: Samples, name: str, function: str) -> tuple[float, float, float]:
    high, normal, low = (
        get(m, name, function=function, priority=p) for p in ("high", "normal", "low")
    )
    return high, normal, low


@pytest.mark.timeout(120)
def test_counters_equal_what_happened(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"alpha": 2, "beta": 1})
        hold = tmp_path / "hold"
        hold.mkdir()
        with farm.Client(up.addr) as client:
            held = client.submit("alpha", f"hold:{hold}")
            first = wait_for("the held job to start", lambda: list(hold.glob("started-*")))
            for text in ("abc", "def", "ghi"):
                assert client.call("alpha", text) == text[::-1].encode()
            assert client.call("alpha", "hi", priority="high") == b"ih"
            with pytest.raises(JobException, match="asked to fail"):
                client.call("alpha", "raise")
            # kill -9 the worker holding a job: the server runs it again elsewhere.
            os.kill(int(first[0].name.split("-")[1]), signal.SIGKILL)
            wait_for("the held job's second try", lambda: len(list(hold.glob("started-*"))) == 2)
            (hold / "go").touch()
            assert client.wait(held, timeout=30) == b"held"

            for text in ("one", "two"):
                assert client.call("beta", text, priority="low") == text[::-1].encode()
            with pytest.raises(JobFailed):
                client.call("beta", "sleep", timeout=30)  # the server fails it at 1 s

        def settled() -> Samples | None:
            m = scrape(up.metrics_url)
            crashes = get(m, "farm_pool_restarts_total", pool="alpha", cause="crash")
            timeouts = get(m, "farm_pool_restarts_total", pool="beta", cause="timeout")
            idle = [get(m, "farm_pool_processes", pool=p, state="idle") for p in ("alpha", "beta")]
            return m if crashes and timeouts and idle == [2, 1] else None

        m = wait_for("the crash and the timeout kill counted", settled, timeout=30)

        assert by_priority(m, "farm_jobs_submitted_total", "alpha") == (1, 5, 0)
        assert by_priority(m, "farm_jobs_completed_total", "alpha") == (1, 4, 0)
        assert by_priority(m, "farm_jobs_exceptions_total", "alpha") == (0, 1, 0)
        assert by_priority(m, "farm_jobs_failed_total", "alpha") == (0, 0, 0)
        assert by_priority(m, "farm_jobs_retried_total", "alpha") == (0, 1, 0)
        assert by_priority(m, "farm_jobs_timed_out_total", "alpha") == (0, 0, 0)
        assert by_priority(m, "farm_jobs_submitted_total", "beta") == (0, 1, 2)
        assert by_priority(m, "farm_jobs_completed_total", "beta") == (0, 0, 2)
        assert by_priority(m, "farm_jobs_failed_total", "beta") == (0, 1, 0)
        assert by_priority(m, "farm_jobs_timed_out_total", "beta") == (0, 1, 0)
        assert by_priority(m, "farm_jobs_retried_total", "beta") == (0, 0, 0)

        # Every answer has a run time (the killed try has none); every start a queue wait.
        assert get(m, "farm_job_run_seconds_count", function="alpha") == 6
        assert get(m, "farm_job_queue_wait_seconds_count", function="alpha") == 7
        assert get(m, "farm_job_run_seconds_count", function="beta") == 3
        assert get(m, "farm_job_queue_wait_seconds_count", function="beta") == 3
        assert get(m, "farm_job_run_seconds_bucket", function="beta", le="+Inf") == 3
        # The timed-out job ran its second, past the bucket of 0.5 s (the quick answers are
        # below it unless a loaded machine stalls them: not counted exactly).
        quick = get(m, "farm_job_run_seconds_bucket", function="beta", le="0.5")
        assert (
            quick <= 2
            and get(m, "farm_job_run_seconds_bucket", function="beta", le="+Inf") - quick >= 1
        )

        for pool, cause in [(p, c) for p in ("alpha", "beta") for c in CAUSES]:
            expected = {("alpha", "crash"): 1, ("beta", "timeout"): 1}.get((pool, cause), 0)
            assert get(m, "farm_pool_restarts_total", pool=pool, cause=cause) == expected, (
                pool,
                cause,
            )
        assert series(m, "farm_jobs_submitted_total", "function") == {"alpha", "beta"}
        assert get(m, "farm_server_up") == 1
        assert get(m, "farm_workers", function="alpha") == 2  # the killed one's successor too
    finally:
        up.stop()
