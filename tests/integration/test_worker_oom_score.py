"""Which process of a farm the kernel's OOM killer takes first: a worker, whose loss the
supervisor repairs (a requeued job, a slot filled again), not the job server or the
supervisor (docs/operations.md, `OOMPolicy=continue`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from farm.pools.spawn import WORKER_OOM_SCORE_ADJ
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_workers_are_the_oom_killer_s_first_choice_and_the_server_is_not(
    tmp_path: Path,
) -> None:
    # With no OOMPolicy= the unit took systemd's DefaultOOMPolicy=stop: one worker killed
    # for memory stopped the whole farm; and nothing steered the kernel off the job server
    # or the supervisor, whose loss costs every connection, or the farm.
    base = oom_score_adj(os.getpid())
    if base >= WORKER_OOM_SCORE_ADJ:
        pytest.skip(f"this test runs with oom_score_adj {base} already")
    pools = f"""
[functions.reverse]
target = "tests.helpers.serving:reverse"
workers = 1

[functions.waiting]
command = ["{sys.executable}", "-c", "import time; time.sleep(60)"]
workers = 1
"""
    up = FarmUp(tmp_path, pools, supervisor="ready_wait = 1")  # the command never serves
    try:
        up.expect_notify("READY=1")

        def started() -> list[dict] | None:
            rows = up.workers()
            return rows if len(rows) == 2 and all(r["pid"] for r in rows) else None

        rows = wait_for("both workers started", started, timeout=20)
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        assert oom_score_adj(up.proc.pid) == base, "the supervisor's is left as it was"
        assert oom_score_adj(server) == base, "the job server's is left as it was"
        for row in rows:  # a Python worker's, and a command's (any executable)
            assert oom_score_adj(row["pid"]) == WORKER_OOM_SCORE_ADJ, row
    finally:
        up.stop()
