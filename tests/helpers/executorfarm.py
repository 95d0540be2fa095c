"""A farm server with executor workers serving farm.python, for farm.Executor's tests, and
its fixtures (shared_farm, one per test module, and ex), which a test module takes as
`shared_farm = executorfarm.shared_farm`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farm
from farm.executor.signing import KEY_ENV, ensure_key
from tests.helpers import ROOT
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

WORKER = [sys.executable, "-c", "from farm.cli import main; main()", "worker"]


class ExecutorFarm:
    """``farm server --job-retries RETRIES`` (1: a job runs once) and ``count`` workers
    serving farm.python with ``key``."""

    def __init__(self, tmp: Path, count: int = 2, retries: int = 1) -> None:
        self.key = ensure_key(tmp / "executor.key")
        # Workers of farm.* functions must come over the Unix socket; callers may use TCP.
        self.unix = str(tmp / "gearman.sock")
        self.server: Server = start_farm_server("--job-retries", str(retries), unix=self.unix)
        wait_for("the Unix socket", lambda: os.path.exists(self.unix))
        self.workers: list[subprocess.Popen] = []
        for _ in range(count):
            self.add_worker(self.key)

    @property
    def addr(self) -> str:
        return self.server.addr

    def add_worker(self, key: Path, name: str = "farm.python") -> subprocess.Popen:
        env = dict(os.environ, **{KEY_ENV: str(key)})
        where = f"unix:{self.unix}"
        cmd = [*WORKER, "farm.executor.call:run_call", "--name", name, "--server", where]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        self.workers.append(proc)
        return proc

    def executor(self, **options: Any) -> farm.Executor:
        return farm.Executor(servers=self.addr, key_file=str(self.key), **options)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
        for proc in self.workers:
            proc.wait(10)
        self.server.stop()


@pytest.fixture(scope="module")
def shared_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutorFarm]:
    f = ExecutorFarm(tmp_path_factory.mktemp("executor"))
    yield f
    f.stop()


@pytest.fixture
def ex(shared_farm: ExecutorFarm) -> Iterator[farm.Executor]:
    with shared_farm.executor() as executor:
        yield executor
