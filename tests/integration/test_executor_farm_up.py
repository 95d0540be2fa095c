"""farm.Executor against a real `farm up`: the supervisor makes the key and serves the pool."""

from __future__ import annotations

import os
import stat
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import farm
from farm.executor.signing import KEY_ENV
from tests.helpers.calls import long_at, nap, nested_warnings
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


@pytest.mark.parametrize("code", [1, 3])
def test_calls_that_kill_their_worker_leave_the_pool_serving(tmp_path: Path, code: int) -> None:
    """A call that kills its worker (os._exit) is run job_retries times, each in a fresh
    worker; each death is the job's, so the slot restarts at once. Counted as crashes, a
    few such calls marked both slots failing and stalled every caller for minutes; exit
    code 3 (the worker's own boot-failure code) was read as a boot failure and backed off."""
    key = tmp_path / "state" / "executor.key"
    up = FarmUp(tmp_path, FUNCTIONS, extra_env={"FARM_KEY_FILE": str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 2})
        with farm.Executor(servers=f"unix:{up.unix}", key_file=str(key)) as pool:
            for _ in range(4):  # one after another: each is its own job, run 3 times
                with pytest.raises(farm.WorkerLost):
                    pool.submit(os._exit, code).result(timeout=60)
            assert not up.workers("farm.python", "failing")
            assert pool.submit(abs, -3).result(timeout=30) == 3
        log = up.read_log()
        assert "crashed in job" in log and "restarting now" in log
        assert "slot failing" not in log and "failed to boot" not in log
    finally:
        assert up.stop() == 0


@contextmanager
def timed_pool(tmp_path: Path, **options: Any) -> Iterator[tuple[FarmUp, farm.Executor]]:
    """`farm up` with a pool of two workers under `timeout = 2`, and an Executor for it
    (``options``: the Executor's); both stopped on leaving, the farm's exit code checked."""
    key = tmp_path / "state" / "executor.key"
    timed = '[functions."farm.timed"]\ntarget = "farm.executor.call:run_call"\n'
    up = FarmUp(tmp_path, timed + "workers = 2\ntimeout = 2\n", extra_env={KEY_ENV: str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.timed": 2})
        where = f"unix:{up.unix}"
        with farm.Executor(
            servers=where, key_file=str(key), function="farm.timed", **options
        ) as ex:
            yield up, ex
    finally:
        assert up.stop() == 0


def test_short_calls_batched_under_a_pool_timeout_all_run(tmp_path: Path) -> None:
    """Calls piled up travel in batches; under a pool's `timeout` a worker runs a batch's
    calls only while 3/4 of it lasts, and the caller sends the rest again. A batch of
    short calls used to outlive the timeout: its calls failed with WorkerLost."""
    with timed_pool(tmp_path) as (up, ex):
        futures = [ex.submit(time.sleep, 0.3) for _ in range(40)]
        assert [f.result(timeout=120) for f in futures] == [None] * 40
        assert "ran past its 2s timeout" not in up.read_log()


def test_calls_batched_behind_one_that_overruns_the_pool_timeout_run_elsewhere(
    tmp_path: Path,
) -> None:
    """A batch's call that runs past its pool's `timeout` fails with WorkerLost (its worker is
    killed); the calls after it in the batch, which had not started, are given back at 3/4
    of the timeout and run on another worker. They failed with WorkerLost with it."""
    with timed_pool(tmp_path, max_workers=1) as (up, ex):
        first = ex.submit(nap, 0.3)  # holds the window (one job) while the batch queues
        # The batch is calls 0..4 (call 0 and 9 // 2 more of the 9 behind it).
        steps = [ex.submit(long_at, i, 1, 30) for i in range(10)]
        # The server says why it failed the job (fail-reason): "died, ..., or overran its
        # timeout (the farm's log says which)" named every cause.
        with pytest.raises(farm.WorkerLost, match=r"timeout of 2 s \(CAN_DO_TIMEOUT\); the call"):
            steps[1].result(timeout=60)
        assert first.result(timeout=60) == 0.3
        assert [f.result(timeout=60) for f in steps[2:]] == list(range(2, 10))
        assert steps[0].result(timeout=0) == 0
        assert "(farm.timed) timed out on its worker" in up.read_log()


def test_an_executor_made_inside_a_call_of_its_own_pool_warns(tmp_path: Path) -> None:
    """A call that makes a farm.Executor for its own pool queues calls for the workers such
    calls occupy (stuck for good once each runs one): the worker warns, in the farm's log.
    With a worker free it still runs; an Executor for another pool is no warning."""
    key = tmp_path / "state" / "executor.key"
    up = FarmUp(tmp_path, FUNCTIONS, extra_env={"FARM_KEY_FILE": str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 2})
        where = f"unix:{up.unix}"
        with farm.Executor(servers=where, key_file=str(key)) as pool:
            same = pool.submit(nested_warnings, where, str(key), "farm.python", True)
            other = pool.submit(nested_warnings, where, str(key), "farm.other", False)
            (warned,) = same.result(timeout=60)
            assert "sends its calls to the same pool" in warned and "farm.inner" in warned
            assert other.result(timeout=60) == []
        # Outside the farm's calls (this process): no warning either.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            farm.Executor(1, servers=where, key_file=str(key)).shutdown()
    finally:
        assert up.stop() == 0


@pytest.mark.parametrize("make", ["directory", "not a key"])
def test_a_key_file_that_cannot_be_used_is_said_at_start(tmp_path: Path, make: str) -> None:
    # $FARM_KEY_FILE naming a directory, or a file that holds no key, was logged as
    # "executor key: PATH" and found out only by each farm.Executor call.
    key = tmp_path / "key"
    if make == "directory":
        key.mkdir()
    else:
        key.write_text("not hex\n")
        key.chmod(0o600)
    up = FarmUp(tmp_path, FUNCTIONS, extra_env={KEY_ENV: str(key)})
    try:
        up.expect_notify("READY=1")
        said = "Is a directory" if make == "directory" else "must hold at least 32 hex digits"
        line = next(x for x in up.read_log().splitlines() if f"key file {key}" in x)
        assert said in line and "farm.Executor calls will be refused" in line, line
    finally:
        assert up.stop() == 0


def test_a_sites_wrapper_of_the_executors_target_serves_the_pool(tmp_path: Path) -> None:
    """A site's wrapper (its own set-up, then farm.executor.call.run_call) signs its results
    as the Executor's target does; the config refused it for a farm.* pool ("only target =
    farm.executor.call:run_call runs"), so `farm up` and `farm reload` failed on it."""
    key = tmp_path / "state" / "executor.key"
    wrapped = FUNCTIONS.replace(
        "farm.executor.call:run_call", "tests.helpers.executorwrap:run_call"
    )
    up = FarmUp(tmp_path, wrapped, extra_env={KEY_ENV: str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 2})
        with farm.Executor(servers=f"unix:{up.unix}", key_file=str(key)) as pool:
            assert pool.submit(divmod, 17, 5).result(timeout=60) == (3, 2)
    finally:
        assert up.stop() == 0
