"""A farm in a container whose CPU quota or memory limit is smaller than the host: what
``workers = "auto"`` and ``memory_budget_mb = "auto"`` come to (docker run --cpus 0.5 on a
host of more cores; --memory below what the pools would need)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.cgrouplimits import inside, limited
from tests.helpers.configs import write

POOL = """
[server]
listen = ["unix:{run}/gearman.sock"]
store = "none"

[supervisor]
control = "{run}/control.sock"
metrics = "off"

[functions.rev]
target = "workers.text:reverse"
workers = {workers}
"""


def check(tmp_path: Path, group: Path, workers: str) -> subprocess.CompletedProcess[str]:
    config = write(tmp_path, POOL.format(run=tmp_path, workers=workers))
    argv = [sys.executable, "-m", "farm", "check", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        inside(group, argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to be fewer")
def test_auto_workers_are_the_cpu_quota_not_the_cores(tmp_path: Path) -> None:
    """Half a CPU's quota is one worker, not one per core each throttled to a sliver."""
    limits = {"cpu.max": "50000 100000", "cpu.cfs_quota_us": "50000"}
    with limited("cpu", limits) as group:
        done = check(tmp_path, group, '"auto"')
    assert done.returncode == 0, done.stderr
    assert "1 pool(s), 1 slot(s)" in done.stdout, done.stdout
    # and why: a count lower than the cores with nothing saying so looked like a bug
    cores = len(os.sched_getaffinity(0))
    assert f"CPU quota is 0.5 CPU of {cores} cores" in done.stdout, done.stdout


def test_memory_budget_is_the_memory_limit_not_the_hosts(tmp_path: Path) -> None:
    """20 workers (100 MB each, as the budget counts them) do not fit a 512 MB limit."""
    limit = str(512 * 2**20)
    with limited("memory", {"memory.max": limit, "memory.limit_in_bytes": limit}) as group:
        done = check(tmp_path, group, "20")
    assert done.returncode == 2, done.stdout
    assert "more than [supervisor] memory_budget_mb = 512" in done.stderr, done.stderr
    assert "this cgroup's memory limit" in done.stderr, done.stderr  # a 512 never written


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to be fewer")
def test_an_executor_no_server_sizes_counts_the_cpu_quota(tmp_path: Path) -> None:
    """With no pool size to ask, farm.Executor() takes the cores it may use, as loky does."""
    code = (
        "import farm, sys; from farm.executor.signing import ensure_key;"
        " key = str(ensure_key(__import__('pathlib').Path(sys.argv[1])));"
        " print(farm.Executor(servers='127.0.0.1:1', key_file=key)._max_workers)"
    )
    argv = [sys.executable, "-c", code, str(tmp_path / "executor.key")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    limits = {"cpu.max": "50000 100000", "cpu.cfs_quota_us": "50000"}
    with limited("cpu", limits) as group:
        done = subprocess.run(
            inside(group, argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"], done.stdout
