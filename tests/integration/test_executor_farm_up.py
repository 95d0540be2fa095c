"""farm.Executor against a real `farm up`: the supervisor makes the key and serves the pool."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import farm
from tests.helpers.farmproc import FarmUp

FUNCTIONS = """
[functions."farm.python"]
target = "farm.executor.call:run_call"
workers = 2
"""


def test_executor_runs_on_the_supervised_pinned_pool(tmp_path: Path) -> None:
    key = tmp_path / "state" / "executor.key"
    up = FarmUp(tmp_path, FUNCTIONS, extra_env={"FARM_KEY_FILE": str(key)})
    try:
        up.expect_notify("READY=1")
        rows = up.wait_idle({"farm.python": 2})
        assert stat.S_IMODE(key.stat().st_mode) == 0o600  # made by the supervisor at start
        with farm.Executor(servers=up.addr, key_file=str(key)) as pool:
            pids = set(pool.map(lambda _: os.getpid(), range(40)))
            assert sum(pool.map(lambda x: x * x, range(100), chunksize=10)) == 328350
        assert pids <= {row["pid"] for row in rows}
    finally:
        assert up.stop() == 0
