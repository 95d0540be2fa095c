"""A call whose worker passed its pool's kill_rss_mb, against a real `farm up`: the caller's
WorkerLost says what may have ended it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import farm
from tests.helpers.calls import grow
from tests.helpers.farmproc import FarmUp

# As tests/reliability/test_rss_kill.py: a fresh worker is ~25 MiB; the call passes
# kill_rss_mb 150 within a fraction of a second, long before its 600 MB.
POOL = """
[functions."farm.python"]
target = "farm.executor.call:run_call"
workers = 1
max_rss_mb = 60
kill_rss_mb = 150
"""


@pytest.mark.timeout(60)
def test_a_call_past_kill_rss_mb_says_so_in_its_worker_lost(tmp_path: Path) -> None:
    # The WorkerLost said "died (or overran its timeout)": kill_rss_mb, a likely cause for a
    # data-science call, was only in the farm's log.
    key = tmp_path / "state" / "executor.key"
    up = FarmUp(tmp_path, POOL, extra_env={"FARM_KEY_FILE": str(key)}, metrics=False)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 1})
        ex = farm.Executor(1, servers=f"unix:{up.unix}", key_file=str(key))
        with ex, pytest.raises(farm.WorkerLost) as info:
            ex.submit(grow, 600).result(timeout=30)
        # The worker says why before its WORK_FAIL: the WorkerLost names the cause itself.
        # Its newline (the warning is a line, for the gearman CLI) is not the WorkerLost's.
        said = str(info.value)
        why = r"failed; its last warning: RSS \d+ MiB over kill_rss_mb 150; worker exits \(it may"
        assert re.search(why, said), said
        assert "\n" not in said, said
    finally:
        assert up.stop() == 0
