"""farm.Executor when its job server is killed -9 under a real `farm up`, which restarts it:
every future ends (a result, or ServerUnavailable for the calls the server held) within
connect_timeout and a bound, wherever the kill lands -- right after the submits, before any
JOB_CREATED; while a batch is half answered; while a map with buffersize reads; during
shutdown(wait=True) -- and the spill files of the calls lost with it do not wait for the
supervisor's sweep. Each test has a farm of its own: the supervisor restarts a first crash
at once, and later ones with a backoff."""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers.calls import (
    add,
    batch_gate_step,
    large_result_after_gate,
    nap,
    nbytes_after_gate,
    size_plus,
    wait_gate,
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

    def executor(self, max_workers: int = 2, transport: str = "unix") -> farm.Executor:
        """Over the Unix socket (connects in the pump's thread) or TCP (in a thread each)."""
        return farm.Executor(
            max_workers,
            servers=[f"unix:{self.up.unix}" if transport == "unix" else self.up.addr],
            key_file=str(self.key),
            connect_timeout=CONNECT_TIMEOUT,
        )

    def at_gate(self, ex: farm.Executor, n: int = 2) -> list[Future[Any]]:
        """``n`` calls waiting at the gate, one per job: each sent once the one before
        arrived, so none waits in a batch behind another."""
        futures = []
        for arrived in range(1, n + 1):
            futures.append(ex.submit(wait_gate, self.gate.path))
            self.gate.arrived(arrived)
        return futures

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


@pytest.mark.timeout(60)
def test_a_large_result_that_reached_its_server_as_it_died_leaves_no_file(shared: Farm) -> None:
    # The worker's answer went into the server's socket while the server hung (stopped), and
    # then it was killed: the worker's write went through, so only the caller, which lost
    # the call, can tell that nobody will read the file. It waited for the sweep.
    with shared.executor() as ex:
        result = ex.submit(large_result_after_gate, shared.gate.path, BIG)
        shared.gate.arrived(1)
        (server,) = [r["pid"] for r in shared.up.ps() if r["function"] == "server"]
        os.kill(server, signal.SIGSTOP)
        shared.gate.open()
        wait_for("the result's file", shared.files)
        # Done: its answer goes to the stopped server (written in the turn it reports idle;
        # a kill before that fails the write, and the worker removes the file itself).
        shared.up.wait_idle({"farm.python": 2})
        os.kill(server, signal.SIGKILL)
        assert ended([result]) == [farm.ServerUnavailable]
        wait_for("the result's file to go", lambda: not shared.files(), timeout=10)
        # The caller's doing, not the worker's: the worker's answer was written (it neither
        # failed nor found the server's end first), so its unsent hook was dropped.
        two = wait_for(  # each of the two workers says how it lost the server
            "the workers to lose the server", lambda: _losses(shared.up.read_log(), 2)
        )
        assert not [line for line in two if "write failed" in line or "answer left" in line]


def _losses(log: str, at_least: int) -> list[str] | None:
    """The workers' lines about a job server they lost (each logs one as it reconnects),
    once there are ``at_least``."""
    lines = [line for line in log.splitlines() if "job server" in line and "reconnecting" in line]
    return lines if len(lines) >= at_least else None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_calls_sent_just_before_the_kill_end(shared: Farm, transport: str) -> None:
    # The server stopped, then killed: the calls were written to it and it never read them,
    # nor answered JOB_CREATED. Those in flight fail unconfirmed; the rest go to the new one.
    with shared.executor(transport=transport) as ex:
        assert ex.submit(add, 0, 0).result(timeout=30) == 0  # connected
        server = [r["pid"] for r in shared.up.ps() if r["function"] == "server"][0]
        os.kill(server, signal.SIGSTOP)
        futures = [ex.submit(add, i, 1) for i in range(6)]
        shared.gate.open()  # a call at it passes at once
        futures.append(ex.submit(nbytes_after_gate, b"\x01" * BIG, shared.gate.path))
        os.kill(server, signal.SIGKILL)
        outcomes = ended(futures)
        assert farm.ServerUnavailable in outcomes  # the window's calls were lost
        for i, outcome in enumerate(outcomes[:6]):
            assert outcome in (farm.ServerUnavailable, i + 1)
        assert outcomes[6] in (farm.ServerUnavailable, BIG)
        wait_for("the argument's file to go", lambda: not shared.files(), timeout=10)
        assert ex.submit(add, 2, 2).result(timeout=ENDS_WITHIN) == 4


@pytest.mark.timeout(60)
def test_a_batch_half_answered_when_the_server_dies_ends(shared: Farm) -> None:
    # One job in flight at a time, so the calls queued behind a slow one travel as a batch
    # of calls 0..4 (flight.take); 0..2 come back in a WORK_DATA before 3 waits at the gate.
    with shared.executor(max_workers=1) as ex:
        first = ex.submit(nap, 0.5)  # holds the window while the batch queues up
        steps = [ex.submit(batch_gate_step, i, shared.gate.path, 2, 3) for i in range(10)]
        shared.gate.arrived(1)
        assert ended([first, *steps[:3]]) == [0.5, 0, 1, 2]
        assert not any(f.done() for f in steps[3:5])
        shared.up.kill_server()
        shared.gate.open()  # the lost batch runs on, answering nobody
        outcomes = ended(steps)
        assert outcomes[3:5] == [farm.ServerUnavailable] * 2
        assert all(o in (farm.ServerUnavailable, i) for i, o in enumerate(outcomes))
        assert ex.submit(add, 2, 3).result(timeout=ENDS_WITHIN) == 5


@pytest.mark.timeout(60)
def test_a_map_with_buffersize_ends_when_the_server_dies_under_it(shared: Farm) -> None:
    gate = shared.gate.path
    ex = shared.executor()
    try:

        def endless() -> Iterator[str]:
            while True:
                yield gate

        # map's own timeout bounds each next(): a hang fails as TimeoutError.
        values = ex.map(wait_gate, endless(), buffersize=4, timeout=ENDS_WITHIN)
        shared.gate.arrived(2)  # two calls at the gate, two more on the server or waiting
        shared.up.kill_server()
        with pytest.raises(farm.ServerUnavailable):
            next(values)
        with pytest.raises(StopIteration):
            next(values)
    finally:
        shared.gate.open()
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_shutdown_wait_during_the_kill_returns(shared: Farm, transport: str) -> None:
    before = {t for t in threading.enumerate() if t.name == "farm-executor"}  # other tests'
    ex = shared.executor(transport=transport)
    futures = shared.at_gate(ex) + [ex.submit(add, i, 0) for i in range(6)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True})
    stopper.start()
    shared.up.kill_server()
    shared.gate.open()  # the lost calls' workers are free again for the waiting ones
    stopper.join(ENDS_WITHIN)
    assert not stopper.is_alive(), "shutdown(wait=True) never returned"
    outcomes = ended(futures)
    assert outcomes[:2] == [farm.ServerUnavailable] * 2
    assert all(o in (farm.ServerUnavailable, i) for i, o in enumerate(outcomes[2:]))
    pumps = {t for t in threading.enumerate() if t.name == "farm-executor"}
    assert not pumps - before, "the executor's thread outlived shutdown(wait=True)"
