"""The farm that CPython's concurrent.futures tests run against (test_executor_cpython*.py):
its pools, a handle giving executors and gates, and its fixtures (shared, one per test
module, and executor), which a test module takes as `shared = cpythonfarm.shared`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers.farmproc import FarmUp, executor_farm
from tests.helpers.gate import Gate

POOLS = """
[functions."farm.python"]
target = "farm.executor.call:run_call"
workers = 2

[functions."farm.solo"]
target = "farm.executor.call:run_call"
workers = 1
"""


WORKERS = 2


class Farm:
    def __init__(self, up: FarmUp, key: Path, tmp: Path) -> None:
        self.up = up
        self.key = key
        self.tmp = tmp
        self.gates = itertools.count()

    @property
    def servers(self) -> list[str]:
        return [f"unix:{self.up.unix}"]

    def executor(self, max_workers: int | None = WORKERS, **options: Any) -> farm.Executor:
        return farm.Executor(max_workers, servers=self.servers, key_file=str(self.key), **options)

    def gate(self) -> Gate:
        return Gate(self.tmp / f"gate-{next(self.gates)}")


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    tmp = tmp_path_factory.mktemp("cpython")
    with executor_farm(tmp, POOLS, {"farm.python": WORKERS, "farm.solo": 1}) as (up, key):
        yield Farm(up, key, tmp)


@pytest.fixture
def executor(shared: Farm) -> Iterator[farm.Executor]:
    ex = shared.executor()
    yield ex
    ex.shutdown(wait=True)
