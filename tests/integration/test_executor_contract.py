"""farm.Executor keeps the concurrent.futures contract against real processes: no future
left pending and no worker killed when the pump dies, a result or exception that cannot
be unpickled (or pickled) fails only its call, a forked child uses the executor on its own,
and map keeps no result alive.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import weakref
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import farm
from farm.executor import spill
from tests.helpers import ROOT, executorfarm
from tests.helpers.calls import (
    POOL_CONTEXT,
    add,
    batch_gate_step,
    box,
    exits_when_loaded,
    exits_when_pickled,
    identity,
    large_result,
    nap,
    nested,
    pid_then_block,
    two_arg_error_at,
    unpicklable_result,
    wait_gate,
)
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared_farm = executorfarm.shared_farm
ex = executorfarm.ex

# -- the concurrent.futures contract: no future left pending, no worker killed --


def blocking_call(tmp_path: Path, name: str) -> tuple[str, int]:
    """A fifo for ``pid_then_block`` and our end of it (non-blocking: the call's open() must
    not wait for us)."""
    fifo = str(tmp_path / name)
    os.mkfifo(fifo)
    return fifo, os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)


def started_pid(reader: int) -> int:
    """The pid a ``pid_then_block`` call wrote to the fifo open on ``reader``."""
    ready, _, _ = select.select([reader], [], [], 30)
    assert ready, "the blocking call never started"
    return int(os.read(reader, 64))


def test_a_dead_pump_fails_every_outstanding_future(tmp_path: Path) -> None:
    # A done-callback raising SystemExit (Future runs callbacks catching only Exception)
    # kills the pump thread while one call is in flight, the rest of a batch is in flight
    # with the call whose callback raised, and more calls wait: none may stay pending.
    small = ExecutorFarm(tmp_path, count=3)
    fifo1, reader1 = blocking_call(tmp_path, "first")
    fifo2, reader2 = blocking_call(tmp_path, "second")
    gate = Gate(tmp_path / "gate")

    def explode(_: Future[Any]) -> None:
        raise SystemExit("a done-callback raised SystemExit")

    try:
        ex = small.executor(max_workers=2)
        blocked = ex.submit(pid_then_block, fifo1)  # in flight until the end
        started_pid(reader1)
        doomed = ex.submit(pid_then_block, fifo2)  # fills the window
        doomed_pid = started_pid(reader2)
        # The window is full: they wait. Of the batch that leaves, call 0's outcome comes
        # ahead (a WORK_DATA) while call 1 waits at the gate: the callback (run by the pump
        # thread, whichever thread read the outcome) raises with the rest still in flight.
        waiting = [ex.submit(batch_gate_step, i, gate.path, 0, 1) for i in range(10)]
        waiting[0].add_done_callback(explode)
        os.kill(doomed_pid, signal.SIGKILL)  # frees the window: waiting[0..2] leave as a batch
        with pytest.raises(farm.WorkerLost):
            doomed.result(timeout=30)
        assert waiting[0].result(timeout=30) == 0  # its outcome was set before the callback ran
        for future in [*waiting[1:], blocked]:
            exc = future.exception(timeout=30)
            assert isinstance(exc, BrokenExecutor), exc
            assert isinstance(exc, farm.executor.BrokenFarmExecutor)
            assert "SystemExit" in str(exc)
        with pytest.raises(farm.executor.BrokenFarmExecutor):
            ex.submit(add, 1, 1)
        ex.shutdown(wait=True)
    finally:
        gate.open()
        os.close(reader1)
        os.close(reader2)
        small.stop()


def test_a_result_that_cannot_be_unpickled_fails_only_its_call(ex: farm.Executor) -> None:
    # ProcessPoolExecutor breaks when it cannot unpickle a result (it cannot tell whose it
    # is); the executor knows the call, so only that call fails, even for a BaseException.
    future = ex.submit(exits_when_loaded)
    with pytest.raises(farm.JobError, match="cannot unpickle the result") as err:
        future.result(timeout=30)
    assert isinstance(err.value.__cause__, SystemExit)
    assert ex.submit(add, 1, 1).result(timeout=30) == 2


def test_an_exception_that_cannot_be_unpickled_fails_only_its_call_in_a_batch(
    ex: farm.Executor,
) -> None:
    # Calls waiting together travel as one job; the one exception that would not load in
    # the caller must not cost the batch's other calls their results.
    futures = [ex.submit(two_arg_error_at, i, 100) for i in range(300)]
    with pytest.raises(farm.JobError, match="TwoArgError: x, which cannot be unpickled"):
        futures[100].result(timeout=60)
    assert "two_arg_error_at" in str(futures[100].exception().__cause__)  # its traceback
    assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 100] == [
        i for i in range(300) if i != 100
    ]


BESIDE_SCRIPT = """
def double(x):
    return 2 * x

class Thing:
    def __init__(self, v):
        self.v = v
"""


def says_why(exc: BaseException | None) -> bool:
    """``exc`` is the ModuleNotFoundError of a module the workers cannot import, noted so."""
    assert isinstance(exc, ModuleNotFoundError), exc
    return any("not the caller's" in note for note in getattr(exc, "__notes__", ()))


def test_a_module_the_workers_cannot_import_says_why(
    shared_farm: ExecutorFarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A helper module beside the caller's script: the caller imports it, the farm's
    # workers (their own sys.path) cannot. The error says what to do about it, whether
    # the module is the function's, an argument's class's, or the initializer's.
    (tmp_path / "farm_test_beside_script.py").write_text(BESIDE_SCRIPT)
    monkeypatch.syspath_prepend(str(tmp_path))
    import farm_test_beside_script as beside  # type: ignore[import-not-found]

    try:
        with shared_farm.executor() as ex:
            assert says_why(ex.submit(beside.double, 2).exception(timeout=30))
            assert says_why(ex.submit(identity, beside.Thing(5)).exception(timeout=30))
            assert says_why(ex.submit(identity, x=beside.Thing(5)).exception(timeout=30))
            for chunksize in (1, 2):  # a SINGLE call each, one chunk (ARG_CHUNK)
                with pytest.raises(ModuleNotFoundError) as err:
                    list(ex.map(identity, [beside.Thing(1), beside.Thing(2)], chunksize=chunksize))
                assert says_why(err.value)
            # Calls queued behind one another travel as a batch: each says why.
            first = ex.submit(nap, 0.2)
            batched = [ex.submit(identity, beside.Thing(i)) for i in range(10)]
            assert all(says_why(f.exception(timeout=30)) for f in batched)
            assert first.result(timeout=30) == 0.2
        with shared_farm.executor(initializer=beside.double, initargs=(1,)) as ex:
            with pytest.raises(BrokenExecutor) as broken:
                ex.submit(add, 1, 1).result(timeout=30)
            assert says_why(broken.value.__cause__)
    finally:
        sys.modules.pop("farm_test_beside_script", None)


FORK_PROGRAM = """
import os, sys, time
import farm
from tests.helpers.calls import add, nap

ex = farm.Executor(servers=sys.argv[1], key_file=sys.argv[2])
assert ex.submit(add, 1, 1).result(timeout=30) == 2
across = ex.submit(nap, 1.5)  # in flight while the child starts
pid = os.fork()
if pid == 0:
    # A future of the parent's never finishes here (its reply is the parent's to read);
    # the child's calls go out on connections of its own, and its exit waits for them only.
    try:
        across.result(timeout=1)
        print("child took the parent's reply", flush=True)
    except TimeoutError:
        pass
    print("child", ex.submit(add, 20, 22).result(timeout=30), flush=True)
    sys.exit(0)
print("parent", across.result(timeout=30), ex.submit(add, 2, 3).result(timeout=30), flush=True)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
ex.shutdown()
"""


def test_a_forked_child_uses_the_executor_on_its_own_and_exits(
    shared_farm: ExecutorFarm,
) -> None:
    # Without its own pump the child wrote on the parent's connections (the parent's
    # calls failed: "JOB_CREATED answers no request") and its exit waited for ever on a
    # pump thread that does not exist in a child.
    run = subprocess.run(
        [sys.executable, "-c", FORK_PROGRAM, shared_farm.addr, str(shared_farm.key)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = sorted(run.stdout.splitlines())
    assert lines == ["child 42", "child exit 0", "parent 1.5 5"], (lines, run.stderr)


def test_a_script_functions_remote_traceback_names_its_file_and_line(
    shared_farm: ExecutorFarm, tmp_path: Path
) -> None:
    # cloudpickle names code it sends by value "<dynamic-code>": the traceback said
    # neither where nor what. The workers share the host, so they read the source line.
    script = tmp_path / "script_with_a_bug.py"
    script.write_text(
        "import sys\n"
        "import farm\n"
        "def divide(x):\n"
        "    return x / 0  # the line that fails\n"
        "ex = farm.Executor(servers=sys.argv[1], key_file=sys.argv[2])\n"
        "print(ex.submit(divide, 1).exception(timeout=30).__cause__)\n"
        "ex.shutdown()\n"
    )
    run = subprocess.run(
        [sys.executable, str(script), shared_farm.addr, str(shared_farm.key)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert f'File "{script}", line 4, in divide' in run.stdout, run.stdout
    assert "return x / 0  # the line that fails" in run.stdout, run.stdout


def pickling_program(ex: Executor) -> dict[str, Any]:
    """Results the worker cannot pickle: each is its call's exception, as in the pool."""
    seen: dict[str, Any] = {}
    for fn in (exits_when_pickled, unpicklable_result):
        exc = ex.submit(fn, 3).exception(timeout=30)
        has_traceback = "Traceback (most recent call last)" in str(exc.__cause__)
        seen[fn.__name__] = (type(exc).__name__, str(exc), has_traceback)
    results = ex.map(exits_when_pickled, range(5))
    got: list[Any] = [next(results), next(results), next(results)]
    with pytest.raises(SystemExit) as err:
        next(results)
    got.append(f"raised {err.value}")
    seen["map"] = got
    chunks = ex.map(exits_when_pickled, range(6), chunksize=2)
    got = [next(chunks), next(chunks)]
    with pytest.raises(SystemExit):
        next(chunks)  # 2 and 3 share a chunk
    seen["chunks"] = got
    seen["still_works"] = ex.submit(add, 1, 1).result(timeout=30)
    return seen


def test_a_result_the_worker_cannot_pickle_is_the_calls_exception(tmp_path: Path) -> None:
    small = ExecutorFarm(tmp_path, count=1)
    try:
        with ProcessPoolExecutor(1, mp_context=POOL_CONTEXT) as pool:
            expected = pickling_program(pool)
        assert expected["exits_when_pickled"][:2] == (
            "SystemExit",
            "this result will not be pickled",
        )
        with small.executor() as ex:
            assert pickling_program(ex) == expected
        with small.executor(max_workers=1) as ex:  # calls queued behind `first` go as batches
            first = ex.submit(nap, 0.2)
            futures = [ex.submit(exits_when_pickled, i) for i in range(40)]
            with pytest.raises(SystemExit, match="will not be pickled"):
                futures[3].result(timeout=30)
            assert [f.result(timeout=30) for f in futures if f is not futures[3]] == [
                i for i in range(40) if i != 3
            ]
            assert first.result(timeout=30) == 0.2
        assert small.workers[0].poll() is None, "the worker survived every call"
    finally:
        small.stop()


#: Deeper than any recursion limit a pickler runs under.
TOO_DEEP = 100_000


def too_deep_program(ex: Executor) -> dict[str, Any]:
    """An object too deep to pickle, as a result and as an argument: plain pickle's
    RecursionError, as in the pool, where farm tried cloudpickle next and raised its
    PicklingError ("excessively deep recursion") instead."""
    seen: dict[str, Any] = {}
    deep = nested(TOO_DEEP)
    futures = {
        "result": ex.submit(nested, TOO_DEEP),
        "argument": ex.submit(identity, deep),
        "keyword argument": ex.submit(identity, value=deep),
    }
    for label, future in futures.items():
        exc = future.exception(timeout=30)
        seen[label] = (type(exc).__name__, str(exc))
    for label, fn, values in (
        ("chunk of results", nested, [1, TOO_DEEP, 1, 1]),
        ("chunk of arguments", identity, [1, deep, 3, 4]),
    ):
        try:
            seen[label] = list(ex.map(fn, values, chunksize=2))
        except Exception as e:  # the first chunk's error
            seen[label] = (type(e).__name__, str(e))
    # Calls queued behind one another travel as batches: only the deep one fails.
    batched = [ex.submit(nested, TOO_DEEP if i == 5 else 1) for i in range(20)]
    seen["batched"] = [type(f.exception(timeout=30)).__name__ for f in batched]
    seen["still_works"] = ex.submit(add, 1, 1).result(timeout=30)
    return seen


def test_an_object_too_deep_to_pickle_fails_as_in_the_pool(ex: farm.Executor) -> None:
    with ProcessPoolExecutor(2, mp_context=POOL_CONTEXT) as pool:
        expected = too_deep_program(pool)
    assert expected["result"][0] == expected["argument"][0] == "RecursionError", expected
    assert expected["batched"][5] == "RecursionError"
    assert too_deep_program(ex) == expected


def test_batched_results_over_the_spill_limit_together_each_keep_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # max_spill_mb caps one call's result. Calls queued behind a busy window travel as one
    # batch, and the outcomes a batch gathers in a flush interval are pickled together: that
    # pickle alone may be over the limit, which is no call's fault.
    monkeypatch.setenv(spill.MAX_SPILL_ENV, "4")  # the workers' limit (and the caller's)
    small = ExecutorFarm(tmp_path, count=1)
    try:
        with small.executor(max_workers=1) as ex, Gate(tmp_path / "gate") as gate:
            first = ex.submit(wait_gate, gate.path)  # holds the window while the rest queue
            futures = [ex.submit(large_result, 3 << 20) for _ in range(8)]
            gate.open()
            assert first.result(timeout=30) is None
            assert [len(f.result(timeout=30)) for f in futures] == [3 << 20] * 8
            with pytest.raises(spill.SpillTooLarge, match="limit of 4 MiB"):
                ex.submit(large_result, 5 << 20).result(timeout=30)  # one alone still fails
    finally:
        small.stop()


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_does_not_keep_the_last_result_alive(ex: farm.Executor, chunksize: int) -> None:
    # bpo-14406, as CPython's test_free_reference: map's iterator holds no reference to a
    # result it yielded (nor to its future) while the caller has moved on.
    results = ex.map(box, range(4), chunksize=chunksize)
    first = next(results)
    assert first.value == 0
    ref = weakref.ref(first)
    del first
    wait_for("the yielded result to be freed", lambda: ref() is None, timeout=5)
    assert [b.value for b in results] == [1, 2, 3]
