"""A job server that stalls for a moment under `farm up` (stopped, or its loop held) is
shown down while it does not answer, and up again at the first scrape after it answers;
scrapes that come together while it stalls wait for it once, not one after another."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import scraping
from tests.helpers.farmproc import FarmUp
from tests.helpers.scraping import get
from tests.helpers.waiting import wait_for

#: farm.pools.metrics.SILENCE_WARNING: how long the server may not answer before a warning.
SILENCE = 10.0

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


@pytest.mark.serial  # measures the scrapes' time: tests beside it would take their part
@pytest.mark.timeout(90)
def test_scrapes_during_a_stall_share_one_wait_on_the_server(tmp_path: Path) -> None:
    # Each scrape waited its 2 s on the stopped server inside the endpoint's lock of one
    # response made at a time, behind the one before: three scrapers took 2, 4 and 6 s,
    # `farm top` (5 s) timed out and lost the supervisor's own numbers with the server's.
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        together = threading.Barrier(3)
        took: list[float] = []
        seen: list[scraping.Samples] = []

        def scraper() -> None:
            together.wait(timeout=10)
            began = time.monotonic()
            samples = scraping.scrape(up.metrics_url, check=False)
            took.append(time.monotonic() - began)
            seen.append(samples)

        threads = [threading.Thread(target=scraper) for _ in range(3)]
        os.kill(server, signal.SIGSTOP)
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
        finally:
            os.kill(server, signal.SIGCONT)
        assert len(seen) == 3
        for samples in seen:
            assert get(samples, "farm_server_up") == 0
            assert get(samples, "farm_pool_target_workers", pool="reverse") == 1
        # One shared wait of 2 s (SERVER_TIMEOUT) each; one after another, the second
        # alone took 4 s. The margin is for a loaded host.
        assert max(took) < 3.9, took
        # Nothing of the stall is kept: the next scrape asks the server afresh.
        assert get(scraping.scrape(up.metrics_url, check=False), "farm_server_up") == 1
    finally:
        up.stop()


@pytest.mark.serial  # measures the scrapes' time: tests beside it would take their part
@pytest.mark.timeout(90)
def test_a_scrape_waits_for_a_stalled_server_within_the_scrapers_own_timeout(
    tmp_path: Path,
) -> None:
    # Prometheus sends its scrape timeout with each scrape. Under one of 1 s (a 1 s
    # interval caps it there), the 2 s wait on a stopped server failed the whole scrape:
    # farm_server_up went stale and FarmScrapeFailing fired where FarmServerDown should.
    # Half the scraper's timeout is the server's now, also for a scrape that joins the
    # request of one that may wait its 2 s (farm top, curl: no timeout sent).
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        seen: dict[str, tuple[float, scraping.Samples]] = {}
        sent = {"X-Prometheus-Scrape-Timeout-Seconds": "1"}

        def scraper(name: str, headers: dict[str, str]) -> None:
            began = time.monotonic()
            samples = scraping.scrape(up.metrics_url, check=False, headers=headers)
            seen[name] = (time.monotonic() - began, samples)

        patient = threading.Thread(target=scraper, args=("patient", {}))
        hurried = threading.Thread(target=scraper, args=("hurried", sent))
        os.kill(server, signal.SIGSTOP)
        try:
            patient.start()
            hurried.start()
            for thread in (patient, hurried):
                thread.join(timeout=30)
        finally:
            os.kill(server, signal.SIGCONT)
        for _, samples in seen.values():
            assert get(samples, "farm_server_up") == 0
            assert get(samples, "farm_pool_target_workers", pool="reverse") == 1
        # Within what Prometheus waits, whichever of the two asked the server first.
        assert seen["hurried"][0] < 1.0, seen["hurried"][0]
        alone = time.monotonic()
        os.kill(server, signal.SIGSTOP)
        try:
            scraper("alone", sent)
        finally:
            os.kill(server, signal.SIGCONT)
        assert seen["alone"][0] < 1.0 and time.monotonic() - alone < 1.0, seen["alone"][0]
        assert get(seen["alone"][1], "farm_server_up") == 0
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_a_server_silent_for_10s_is_a_warning_in_the_log(tmp_path: Path) -> None:
    # A hung job server (its loop held, or stopped) fired FarmServerDown, whose text says
    # `journalctl -u farm -p warning` says why, and the journal said nothing: the
    # supervisor logged the scrapes' unanswered requests at debug only, and a worker's
    # connection stays open to a hung server, so none of them warned either. Staged on a
    # farm: SIGSTOP on its server, the alert fired at 1 minute, the log held no line of it.
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        os.kill(server, signal.SIGSTOP)
        try:
            began = time.monotonic()
            assert get(scraping.scrape(up.metrics_url, check=False), "farm_server_up") == 0
            # Under 10 s of silence it is no news: a busy server may take that.
            assert "has not answered" not in up.read_log()
            time.sleep(max(0.0, SILENCE + 0.5 - (time.monotonic() - began)))
            assert get(scraping.scrape(up.metrics_url, check=False), "farm_server_up") == 0
            warned = wait_for(
                "the warning",
                lambda: [
                    line
                    for line in up.read_log().splitlines()
                    if "WARNING" in line and "has not answered" in line
                ],
                timeout=10,
            )
            assert len(warned) == 1, warned
            assert f"job server (pid {server}) has not answered" in warned[0]
            assert "farm ps" in warned[0] and f"kill -KILL {server}" in warned[0]
            scraping.scrape(up.metrics_url, check=False)  # still silent: said once
        finally:
            os.kill(server, signal.SIGCONT)
        wait_for(
            "a scrape that sees the server answer again",
            lambda: get(scraping.scrape(up.metrics_url, check=False), "farm_server_up") == 1,
            timeout=30,
        )
        log = up.read_log()
        assert log.count("has not answered") == 1, log
        assert f"job server (pid {server}) answers again" in log
    finally:
        up.stop()
