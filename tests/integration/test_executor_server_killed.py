"""farm.Executor when its job server is killed -9 under a real `farm up`, which restarts it:
the spill files of the calls lost with it do not wait for the supervisor's sweep. Each test
has a farm of its own: the supervisor restarts a first crash at once, and later ones with a
backoff."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers.calls import (
    add,
    large_result_after_gate,
    nbytes_after_gate,
    size_plus,
)
from tests.helpers.farmproc import EXECUTOR_POOL, FarmUp
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

CONNECT_TIMEOUT = 5.0
#: Every future ends within this many seconds of the kill: the calls the server held at
#: once, those still in the executor once the restarted server takes them (or at
#: connect_timeout); the rest is room for a loaded host.
ENDS_WITHIN = CONNECT_TIMEOUT + 10
BIG = 2 << 20  # over the spill threshold (1 MiB)


class Farm:
    def __init__(self, up: FarmUp, key: Path, tmp: Path) -> None:
        self.up = up
        self.key = key
        self.spill = key.parent / "spill"  # the default: beside the key file
        self.gate = Gate(tmp / "gate.sock")

    def executor(self, max_workers: int = 2) -> farm.Executor:
        return farm.Executor(
            max_workers,
            servers=[f"unix:{self.up.unix}"],
            key_file=str(self.key),
            connect_timeout=CONNECT_TIMEOUT,
        )

    def files(self) -> list[str]:
        return sorted(os.listdir(self.spill)) if self.spill.exists() else []


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Farm]:
    key = tmp_path / "state" / "executor.key"
    up = FarmUp(tmp_path, EXECUTOR_POOL, extra_env={"FARM_KEY_FILE": str(key)}, metrics=False)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 2})
        f = Farm(up, key, tmp_path)
        with f.gate:  # opened at the end whatever happened: no worker waits at it for good
            yield f
    finally:
        up.stop()


def ended(futures: list[Future[Any]]) -> list[Any]:
    """Each future's value, or ServerUnavailable's type; fails if one has not ended within
    ENDS_WITHIN, or ended otherwise."""
    _, left = wait(futures, timeout=ENDS_WITHIN)
    assert not left, f"{len(left)} of {len(futures)} futures never ended"
    outcomes: list[Any] = []
    for future in futures:
        error = future.exception()
        assert error is None or isinstance(error, farm.ServerUnavailable), repr(error)
        outcomes.append(farm.ServerUnavailable if error else future.result())
    return outcomes


@pytest.mark.timeout(60)
def test_spill_files_of_calls_lost_with_their_server_do_not_wait_for_the_sweep(
    shared: Farm,
) -> None:
    # The caller removes a large argument's file, and a shared function's, when the call
    # fails. The worker of a large result, which wrote its file and then found its server
    # gone, removes it too: no caller could read it, and the sweep took it after an hour.
    gate = shared.gate.path
    with shared.executor() as ex:
        argument = ex.submit(nbytes_after_gate, b"\x01" * BIG, gate)
        shared.gate.arrived(1)
        result = ex.submit(large_result_after_gate, gate, BIG)
        shared.gate.arrived(2)
        waiting = ex.submit(functools.partial(size_plus, b"\x03" * BIG), 1)  # window full
        assert len(shared.files()) == 2  # the argument's and the function's
        shared.up.kill_server()
        shared.gate.open()  # the lost calls run on: one writes its result file, unsent
        outcomes = ended([argument, result, waiting])
        assert outcomes[:2] == [farm.ServerUnavailable] * 2
        assert outcomes[2] in (farm.ServerUnavailable, BIG + 1)
        shared.up.wait_idle({"farm.python": 2}, timeout=30)  # the lost calls answered nobody
        # The caller's go in done-callbacks, which concurrent.futures runs after it wakes
        # result(); the worker's once it finds its answer cannot leave.
        wait_for("the spill files to go", lambda: not shared.files(), timeout=10)
        assert ex.submit(add, 1, 2).result(timeout=ENDS_WITHIN) == 3  # still working
