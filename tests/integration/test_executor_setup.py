"""farm.Executor's initializer, max_tasks_per_child and progress, against a real `farm up`.
What a script's own code (its __main__) may send is in test_executor_scripts.py.

The workers are shared: two executors with different initializers use the
same two workers, each worker running the initializer of the executor whose
call it takes. ``max_tasks_per_child`` recycles supervised workers, which the
supervisor replaces.
"""

from __future__ import annotations

import contextlib
import os
import pty
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import BrokenExecutor, Future, as_completed
from typing import Any

import pytest

import farm
from tests.helpers import setupfarm
from tests.helpers.calls import (
    add,
    get_init_state,
    getpid,
    init_dies,
    init_fails,
    init_state,
)
from tests.helpers.setupfarm import Farm

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared = setupfarm.shared


@pytest.mark.timeout(60)
def test_initializer_state_is_visible_to_the_calls(shared: Farm) -> None:
    with shared.executor(2, None, init_state, ("initialized",)) as ex:
        assert set(ex.map(get_init_state, range(50))) == {"initialized"}
        assert ex.submit(get_init_state).result() == "initialized"


@pytest.mark.timeout(60)
def test_two_executors_with_different_initializers_share_the_workers(shared: Farm) -> None:
    with (
        shared.executor(2, None, init_state, ("first",)) as one,
        shared.executor(2, None, init_state, ("second",)) as two,
    ):
        for _ in range(5):  # interleaved: each worker switches state back and forth
            firsts = [one.submit(get_init_state) for _ in range(4)]
            seconds = [two.submit(get_init_state) for _ in range(4)]
            assert {f.result() for f in firsts} == {"first"}
            assert {f.result() for f in seconds} == {"second"}


@pytest.mark.timeout(60)
def test_a_failing_initializer_breaks_the_executor(
    shared: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    ex = shared.executor(2, None, init_fails)
    futures: list[Future[Any]] = []
    errors: list[BaseException] = []
    for i in range(10):
        try:
            futures.append(ex.submit(add, i))
        except BrokenExecutor as exc:
            # The first call's failure came back while we were still submitting: from
            # then on submit refuses, as ProcessPoolExecutor's does once broken.
            errors.append(exc)
            break
    for future in futures:
        with pytest.raises(BrokenExecutor) as info:
            future.result(timeout=30)
        errors.append(info.value)
    assert futures, "the first submit cannot find the executor broken"
    for error in errors:
        assert isinstance(error, farm.executor.BrokenFarmExecutor)
        assert "initializer" in str(error)
    with pytest.raises(BrokenExecutor):
        ex.submit(add, 1)
    ex.shutdown()
    assert any("initializer" in r.getMessage() for r in caplog.records)
    # The workers are fine: another executor still runs.
    with shared.executor(2) as ok:
        assert ok.submit(add, 2, 3).result(timeout=30) == 5


@pytest.mark.timeout(90)
def test_an_initializer_that_kills_its_worker_breaks_the_executor(shared: Farm) -> None:
    # A worker that dies in the initializer (os._exit, a segfault) reports nothing: each
    # call failed alone with WorkerLost after job_retries (3) workers died running it, the
    # executor took more, and 5 calls cost 15 workers. ProcessPoolExecutor breaks at once;
    # here the executor breaks once two workers of a job died in the initializer (one may
    # be a kill from outside, test_executor_flight.py).
    before = shared.up.read_log().count("exited with code 3")
    ex = shared.executor(2, None, init_dies)
    futures: list[Future[Any]] = []
    with contextlib.suppress(BrokenExecutor):  # broken already while we submit
        for i in range(4):
            futures.append(ex.submit(add, i))
    assert futures, "the first submit cannot find the executor broken"
    for future in futures:
        with pytest.raises(BrokenExecutor) as info:
            future.result(timeout=60)
        assert isinstance(info.value, farm.executor.BrokenFarmExecutor)
        assert "initializer" in str(info.value), info.value
    with pytest.raises(BrokenExecutor):
        ex.submit(add, 1)
    ex.shutdown()
    # Each job in flight (two: max_workers) cost at most three, here job_retries: the first
    # to die in the initializer, the retry whose start tells of it, and the retry whose
    # start tells of the second, which is in the initializer already and dies too. The
    # broken executor's closed connections let the server drop the jobs' further retries.
    shared.up.wait_idle({"farm.python": 2}, timeout=60)
    died = shared.up.read_log().count("exited with code 3") - before
    assert 2 <= died <= 6, shared.up.read_log()
    with shared.executor(2) as ok:  # the workers the supervisor started again serve
        assert ok.submit(add, 2, 3).result(timeout=30) == 5


@pytest.mark.timeout(120)
def test_max_tasks_per_child_one_gives_a_new_pid_per_call(shared: Farm) -> None:
    with shared.executor(2, max_tasks_per_child=1) as ex:
        pids = [ex.submit(getpid).result(timeout=30) for _ in range(6)]
        assert len(set(pids)) == 6, pids
        mapped = list(ex.map(getpid, range(6)))
        assert len(set(mapped) | set(pids)) == 12, mapped
    shared.up.wait_idle({"farm.python": 2}, timeout=30)
    assert "max_tasks_per_child 1" in shared.up.read_log()


@pytest.mark.timeout(60)
def test_map_progress_is_silent_when_not_on_a_terminal(
    shared: Farm, capfd: pytest.CaptureFixture[str]
) -> None:
    with shared.executor(2) as ex:
        assert list(ex.map(add, range(20), progress=True)) == list(range(20))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.timeout(60)
def test_map_progress_draws_a_bar_on_a_terminal(
    shared: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    master, slave = pty.openpty()
    terminal = open(slave, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 (closed below)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")
    try:
        with shared.executor(2) as ex:
            assert list(ex.map(add, range(30), range(30), chunksize=4, progress=True)) == [
                2 * i for i in range(30)
            ]
        terminal.flush()
    finally:
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        terminal.close()
    drawn = b""
    while True:  # the slave is closed: read what the bar wrote until EOF (EIO on Linux)
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    text = drawn.decode(errors="replace")
    assert "add" in text and "30/30" in text, text


class Counting:
    """What tqdm does with an iterable, as far as a caller can tell: wraps it, counts."""

    def __init__(self, iterable: Iterable[Any], total: int | None = None) -> None:
        self.iterable = iterable
        self.total = total
        self.n = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            self.n += 1
            yield item


@pytest.mark.timeout(60)
def test_as_completed_works_under_a_progress_wrapper(shared: Farm) -> None:
    try:
        from tqdm import tqdm as wrapper  # type: ignore[import-untyped]
    except ImportError:
        wrapper = Counting
    with shared.executor(2) as ex:
        futures = [ex.submit(add, i, 1) for i in range(25)]
        bar = wrapper(as_completed(futures), total=len(futures))
        assert sorted(f.result() for f in bar) == list(range(1, 26))
        assert bar.n == 25


@pytest.mark.timeout(60)
def test_what_will_not_pickle_in_a_call_is_named_in_a_note(shared: Farm) -> None:
    """A lock in an argument, in an instance whose method is called, or in a class of the
    script (which travels by value with its attributes, where the pool's processes import
    the script and run the call): the error is what pickling raised, as the pool's, from
    result() as there, and its note says which argument or attribute it was."""
    out = shared.run_script("""
        import threading

        class C:
            lock = threading.Lock()

            def method(self, x):
                return x

        class D:
            def __init__(self):
                self.lock = threading.Lock()

            def method(self, x):
                return x

        def f(x, y=None):
            return x

        with ex() as pool:
            for calls in [
                lambda: [pool.submit(C().method, 1)],
                lambda: [pool.submit(D().method, 1)],
                lambda: [pool.submit(f, 1, threading.Lock())],
                lambda: [pool.submit(f, 1, y=[0, D()])],
                lambda: list(pool.map(f, [1, 2], [None, threading.Lock()]))[:0]
                or [pool.submit(abs, 1)],
            ]:
                try:
                    error = calls()[0].exception(timeout=30)
                except TypeError as raised:  # from map: as its result is due
                    error = raised
                print(type(error).__name__, error, "|", *getattr(error, "__notes__", []))
            print(pool.submit(abs, -1).result(timeout=30))
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    bare = "TypeError cannot pickle '_thread.lock' object | "
    assert all(line.startswith(bare + "farm: ") for line in lines[:5]), out.stdout
    notes = [line.removeprefix(bare) for line in lines[:5]]
    assert "C.lock" in notes[0] and "class of the script" in notes[0], notes[0]
    assert "function of the call cannot be pickled: fn.__self__.lock" in notes[1], notes[1]
    assert "argument 1 of the call cannot be pickled: args[1] (a _thread.lock)" in notes[2]
    assert "keyword argument 'y' of the call cannot be pickled: kwargs['y'][1].lock" in notes[3]
    assert "argument 1 of the map's call 1 (from 0) cannot be pickled: args[1]" in notes[4]
    assert lines[5] == "1"


@pytest.mark.timeout(60)
def test_an_executor_for_a_function_no_worker_serves_says_so(
    shared: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="farm.executor"):
        shared.executor(function="farm.nothere").shutdown()
        assert [r.getMessage() for r in caplog.records if "no worker serves" in r.getMessage()]
        caplog.clear()
        shared.executor().shutdown()  # farm.python has its workers: nothing to say
    assert not [r for r in caplog.records if "no worker serves" in r.getMessage()]
