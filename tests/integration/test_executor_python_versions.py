"""farm.Executor across Python versions, with real workers: code pickled by value (a lambda,
a closure, a class of the script) by another Python's bytecode is refused before it is
unpickled, as an exception of that call, and no worker dies; a function by name still runs.

Another Python's bytecode crashed the worker that ran it (a 3.13 caller's lambda, SIGSEGV in
each 3.11 worker, at every retry), and the caller got WorkerLost. Here the caller claims
another bytecode (``importlib.util.MAGIC_NUMBER``, which its by-value pickles name) and its
code kills the worker that runs it with SIGSEGV, as foreign bytecode did.
"""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor
from pathlib import Path

import pytest

import farm
from tests.helpers.calls import add, adder, adder_at, identity, wait_gate
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.gate import Gate

#: Another Python's bytecode magic (no Python has it: 2 bytes, then "\r\n", as every one).
FOREIGN = b"\x01\x00\r\n"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutorFarm]:
    f = ExecutorFarm(tmp_path_factory.mktemp("versions"), count=2, retries=1)
    yield f
    f.stop()


@pytest.fixture
def foreign_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process pickles by value as a Python of another bytecode would."""
    monkeypatch.setattr(importlib.util, "MAGIC_NUMBER", FOREIGN)


def segfault() -> None:
    """What foreign bytecode did to the worker that ran it. By name itself (the worker
    imports this module): the lambdas that call it are what travel by value."""
    os.kill(os.getpid(), signal.SIGSEGV)


def alive(farm_: ExecutorFarm) -> None:
    assert [p.poll() for p in farm_.workers] == [None] * len(farm_.workers), "a worker died"


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("foreign_caller")
def test_a_function_of_another_python_is_refused_and_no_worker_dies(
    two_workers: ExecutorFarm,
) -> None:
    with two_workers.executor() as ex:
        crash = ex.submit(lambda: segfault())
        with pytest.raises(farm.PythonVersionMismatch, match="pickled by value") as info:
            crash.result(timeout=30)
        assert FOREIGN.hex() in str(info.value)
        assert "import by name" in str(info.value)
        # A function by name has no bytecode in the call: it runs whatever made the call.
        assert ex.submit(add, 2, 3).result(timeout=30) == 5
    alive(two_workers)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("foreign_caller")
def test_arguments_chunks_and_batches_of_another_python_are_refused(
    two_workers: ExecutorFarm,
) -> None:
    with two_workers.executor() as ex:
        # A by-value argument (the function by name): its code is refused too.
        argument = ex.submit(identity, lambda: segfault())
        with pytest.raises(farm.PythonVersionMismatch):
            argument.result(timeout=30)
        # A map's chunks, and the batches the pump packs many calls into.
        with pytest.raises(farm.PythonVersionMismatch):
            list(ex.map(lambda x: segfault(), range(20), chunksize=3))
        futures = [ex.submit(lambda x: segfault(), i) for i in range(20)]
        for future in futures:
            assert isinstance(future.exception(timeout=30), farm.PythonVersionMismatch)
        # A large function (a closure over 2 MiB) travels in a spill file: checked there.
        big = b"x" * (2 << 20)
        with pytest.raises(farm.PythonVersionMismatch, match="large function"):
            ex.submit(lambda: (segfault(), big)).result(timeout=30)
        assert list(ex.map(add, range(20), range(20))) == [2 * i for i in range(20)]
    alive(two_workers)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("foreign_caller")
def test_an_initializer_of_another_python_breaks_the_executor_unrun(
    two_workers: ExecutorFarm,
) -> None:
    ex = two_workers.executor(initializer=lambda: segfault())
    future = ex.submit(add, 1, 2)
    with pytest.raises(BrokenExecutor, match="PythonVersionMismatch"):
        future.result(timeout=30)
    ex.shutdown()
    alive(two_workers)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("foreign_caller")
def test_a_result_of_another_python_is_refused_by_the_caller(two_workers: ExecutorFarm) -> None:
    with two_workers.executor() as ex:
        # A call by name (it runs), whose result is code by value: the worker's bytecode.
        with pytest.raises(farm.PythonVersionMismatch, match="result") as info:
            ex.submit(adder, 1).result(timeout=30)
        assert "this caller" in str(info.value)
        assert ex.submit(add, 2, 3).result(timeout=30) == 5
    alive(two_workers)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("foreign_caller")
def test_data_by_value_without_code_runs_across_versions(two_workers: ExecutorFarm) -> None:
    """docs/executor.md: a function by name with arguments of plain data runs on another
    Python. Data that plain pickle will not take, or a call whose plain pickle spells
    ``__main__``, goes by value (cloudpickle) but holds no bytecode: no guard, no refusal."""
    with two_workers.executor() as ex:
        assert ex.submit(len, "__main__").result(timeout=30) == 8  # payload.dump_call's check
        keys = {"a": 1}.keys()  # a dict's keys view: by value, by its name in cloudpickle
        assert list(ex.submit(identity, keys).result(timeout=30)) == ["a"]  # argument, result
        assert list(ex.submit(dict.keys, {"b": 2}).result(timeout=30)) == ["b"]  # the result
        # Code in the same call is still refused.
        with pytest.raises(farm.PythonVersionMismatch):
            ex.submit(identity, (keys, lambda: segfault())).result(timeout=30)
    alive(two_workers)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("foreign_caller")
def test_a_batch_with_code_in_a_result_names_the_batch(
    two_workers: ExecutorFarm, tmp_path: Path
) -> None:
    """The pump packs waiting calls into one job, whose results travel together: one that
    holds code by value has the whole batch's refused (docs/executor.md), and the error of a
    call that returned plain data says so, rather than that its own result held code."""
    # A call at a gate holds the executor's one job, so the 40 wait and leave in batches
    # (21, then 10 holding the 25th: flight.take): sent as they came, on a loaded host each
    # could go alone, and the 25th did once in a clean-clone CI run.
    with two_workers.executor(max_workers=1) as ex, Gate(tmp_path / "gate") as gate:
        held = ex.submit(wait_gate, gate.path)
        gate.arrived(1)
        futures = [ex.submit(adder_at, i, 25) for i in range(40)]
        gate.open()
        assert held.result(timeout=30) is None
        errors = {i: future.exception(timeout=30) for i, future in enumerate(futures)}
    assert isinstance(errors[25], farm.PythonVersionMismatch)
    batched = [error for i, error in errors.items() if i != 25 and error is not None]
    assert batched, "no call was batched with the one that returned code"
    for error in batched:
        assert isinstance(error, farm.PythonVersionMismatch)
        assert "a result of this call's batch" in str(error), error
    assert sum(errors[i] is None and futures[i].result() == i for i in errors) >= 1
    alive(two_workers)
