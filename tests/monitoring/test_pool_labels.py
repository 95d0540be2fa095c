"""The functions of `farm up`'s own pools have their own series from the server's start, also
before their workers register: none of their jobs is summed under ``function="other"``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

import farm
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.scraping import Samples, get, scrape, series
from tests.helpers.waiting import wait_for

POOLS = """
[functions.alpha]
target = "tests.helpers.monitored:work"
workers = 0

[functions.both]
target = "tests.helpers.monitored:work"
functions = ["beta", "gamma"]
workers = 0
"""


def summed(m: Samples, name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


def kill_server(up: FarmUp) -> None:
    """The job server killed -9, and back: the supervisor started it again, and it answers."""
    (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
    os.kill(server, signal.SIGKILL)
    wait_for(
        "the server restarted",
        lambda: (
            get(scrape(up.metrics_url), "farm_server_restarts_total") == 1
            and get(scrape(up.metrics_url), "farm_server_up") == 1
        ),
        timeout=30,
    )


@pytest.mark.timeout(90)
def test_a_pools_jobs_before_its_workers_register_are_counted_under_its_name(
    tmp_path: Path,
) -> None:
    # After a kill -9 of the job server under load, clients were back before the pools'
    # workers: a scrape in between summed their functions under other, which kept a copy of
    # what they counted there once they were shown by name. Sums over functions held those
    # jobs twice, and FarmJobsFailing fired for a function named "other". A pool with no
    # worker yet (workers = 0, then `farm scale`) is that moment held still.
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        for restart in (False, True):
            if restart:  # the server started again by the supervisor is told them too
                kill_server(up)
            with farm.Client(up.addr) as client:
                for function in ("alpha", "beta", "gamma"):
                    client.submit(function, "ok", background=True)
            m = scrape(up.metrics_url)
            assert series(m, "farm_jobs_submitted_total", "function") == {"alpha", "beta", "gamma"}
            assert get(m, "farm_jobs_queued", function="alpha", priority="normal") == 1
            assert get(m, "farm_jobs_queued", function="gamma", priority="normal") == 1

        assert farm_cli("scale", "--control", up.control, "alpha=1", "both=1").returncode == 0

        def done() -> Samples | None:
            m = scrape(up.metrics_url)
            return m if summed(m, "farm_jobs_completed_total") == 3 else None

        m = wait_for("the pools' workers to run the jobs", done, timeout=30)
        # The server restarted once: what it counts is its second round of jobs, once each.
        assert summed(m, "farm_jobs_submitted_total") == 3
        assert summed(m, "farm_jobs_queued") == 0
        assert "other" not in series(m, "farm_jobs_submitted_total", "function")
    finally:
        up.stop()


ADDED = """
[functions.added]
target = "tests.helpers.monitored:work"
functions = ["delta"]
workers = 0
"""


@pytest.mark.timeout(90)
def test_a_pool_added_by_a_reload_is_labelled_before_its_workers_register(
    tmp_path: Path,
) -> None:
    # The supervisor named its pools' functions to the server only when it started it: a
    # pool a reload added had its jobs summed under other until its workers registered
    # (never, at workers = 0), and FarmQueueBackingUp spoke of "other".
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            client.submit("delta", "ok", background=True)  # its clients came first
        up.config.write_text(up.config.read_text() + ADDED)
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_for(
            "delta labelled by name",
            lambda: (
                get(scrape(up.metrics_url), "farm_jobs_queued", function="delta", priority="normal")
                == 1
            ),
            # Catches a hang only: on a loaded 2-core box the supervisor's two 0.5 s tries
            # and its 5 s retry came close to the 10 s this was.
            timeout=30,
        )
        with farm.Client(up.addr) as client:
            client.submit("delta", "ok", background=True)
        m = scrape(up.metrics_url)
        assert get(m, "farm_jobs_queued", function="delta", priority="normal") == 2
        assert get(m, "farm_workers", function="delta") == 0, "no worker registered it"
    finally:
        up.stop()


SERVES_ITS_FUNCTION = """\
import os
import farm

worker = farm.Worker(os.environ["FARM_SERVERS"])

@worker.function(os.environ["FARM_FUNCTION"])
def rev(job):
    return job.data[::-1]

worker.work()
"""


@pytest.mark.timeout(120)
def test_functions_whose_names_start_with_a_dash_are_served_across_a_server_restart(
    tmp_path: Path,
) -> None:
    # The config allows `-` first in a name. The supervisor started the server with
    # `--pool-function -rev`, which its argparse read as a flag: the server never started
    # (added by a reload: it never came back from its next crash), and a target pool's
    # workers, started with `--function -tgt`, died at once.
    script = tmp_path / "serves.py"
    script.write_text(SERVES_ITS_FUNCTION)
    up = FarmUp(
        tmp_path,
        f"""
        [functions.dashed]
        command = ["{sys.executable}", "{script}"]
        function = "-rev"
        workers = 1

        [functions.-tgt]
        target = "tests.helpers.monitored:work"
        workers = 1
        """,
    )
    try:
        up.expect_notify("READY=1")
        for restart in (False, True):
            if restart:
                kill_server(up)
            with farm.Client(up.addr) as client:
                assert client.call("-rev", "abc", timeout=30) == b"cba"
                assert client.call("-tgt", "xyz", timeout=30) == b"zyx"
            m = scrape(up.metrics_url)
            assert {"-rev", "-tgt"} <= series(m, "farm_jobs_submitted_total", "function")
    finally:
        up.stop()
