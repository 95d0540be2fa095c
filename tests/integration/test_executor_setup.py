"""farm.Executor's initializer, max_tasks_per_child and progress, against a real `farm up`.

The workers are shared: two executors with different initializers use the
same two workers, each worker running the initializer of the executor whose
call it takes. ``max_tasks_per_child`` recycles supervised workers, which the
supervisor replaces.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from concurrent.futures import BrokenExecutor, Future, as_completed
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.calls import add, get_init_state, getpid, init_fails, init_state
from tests.helpers.farmproc import FarmUp, executor_farm


class Farm:
    def __init__(self, up: FarmUp, key: Path) -> None:
        self.up = up
        self.key = key

    def executor(self, *args: Any, **options: Any) -> farm.Executor:
        return farm.Executor(
            *args, servers=[f"unix:{self.up.unix}"], key_file=str(self.key), **options
        )

    def run_script(self, body: str) -> subprocess.CompletedProcess[str]:
        """``body`` run as a script (its own ``__main__``), with an executor ``ex(...)``."""
        head = f"""
            import farm
            def ex(*args, **options):
                return farm.Executor(
                    *args, servers=["unix:{self.up.unix}"], key_file={str(self.key)!r}, **options
                )
        """
        script = textwrap.dedent(head) + textwrap.dedent(body)
        return subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with executor_farm(tmp_path_factory.mktemp("setup")) as (up, key):
        yield Farm(up, key)


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


@pytest.mark.timeout(90)
def test_a_scripts_own_classes_and_partials_travel_as_arguments(shared: Farm) -> None:
    # Plain pickle names them as __main__.Point, __main__.work: the worker's __main__ is
    # not the script, so they must travel by value (as ProcessPoolExecutor finds them).
    done = shared.run_script(
        """
        import dataclasses, functools
        @dataclasses.dataclass
        class Point:
            x: int
            y: int
        def norm(p):
            return p.x * p.x + p.y * p.y
        def work(a, b):
            return a * 10 + b
        def moved(p):
            return Point(p.x + 1, p.y)
        with ex(2) as pool:
            print(pool.submit(norm, Point(3, 4)).result(timeout=30))
            print(pool.submit(functools.partial(work, 2), 3).result(timeout=30))
            print(list(pool.map(functools.partial(work, b=1), [1, 2], timeout=30)))
            print(pool.submit(functools.reduce, work, [1, 2, 3]).result(timeout=30))
            back = pool.submit(moved, Point(1, 2)).result(timeout=30)
            print(isinstance(back, Point), back)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [
        "25",
        "23",
        "[11, 21]",
        "123",
        "True Point(x=2, y=2)",
    ], done.stdout


@pytest.mark.timeout(90)
def test_a_scripts_cached_functions_run_with_a_cache_of_their_own(shared: Farm) -> None:
    # functools.lru_cache's wrapper pickles by name (__main__.fib), which a pool's process
    # finds in the script it imported and the farm's workers cannot: it travels as the
    # function it wraps, by value, under a cache of the same size (even a recursive one).
    # One of a module still travels by name.
    done = shared.run_script(
        """
        import functools
        from tests.helpers.calls import add
        @functools.lru_cache(maxsize=None)
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)
        @functools.cache
        def double(x):
            return 2 * x
        def sizes(f):
            return f.cache_parameters()
        with ex(2) as pool:
            print(pool.submit(fib, 80).result(timeout=30))
            print(list(pool.map(double, [1, 2, 3], chunksize=2, timeout=30)))
            print(pool.submit(sizes, functools.lru_cache(maxsize=7, typed=True)(add)).result(30))
            print(pool.submit(functools.cache(functools.partial(add, 1)), 2).result(30))  # unnamed
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "23416728348467685",
        "[2, 4, 6]",
        "{'maxsize': 7, 'typed': True}",
        "3",
    ], done.stdout


@pytest.mark.timeout(90)
def test_a_scripts_singledispatch_function_travels_with_what_it_registered(
    shared: Farm,
) -> None:
    # Its closure holds a cache of weak references: pickled as it is, the call failed with
    # "cannot pickle 'weakref.ReferenceType' object", where the pool names the function.
    done = shared.run_script(
        """
        import functools
        @functools.singledispatch
        def kind(x):
            return "object"
        @kind.register
        def _(x: int):
            return "int"
        @kind.register(list)
        def _(x):
            return [kind(item) for item in x]
        with ex(2) as pool:
            print(pool.submit(kind, 3).result(timeout=30))
            print(list(pool.map(kind, ["a", [1, "b", [2]]], timeout=30)))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["int", "['object', ['int', 'object', ['int']]]"], (
        done.stdout
    )


@pytest.mark.timeout(90)
def test_a_scripts_class_with_a_cached_property_travels(shared: Farm) -> None:
    # The class travels by value, with its cached_property, which on Python 3.11 holds an
    # RLock: pickled as it is, the call failed with "cannot pickle '_thread.RLock' object",
    # where the pool names the class. The worker's copy computes its value anew.
    done = shared.run_script(
        """
        import functools
        class Model:
            def __init__(self, n):
                self.n = n
            @functools.cached_property
            def table(self):
                "squares"
                return [i * i for i in range(self.n)]
            def predict(self, x):
                return self.table[x]
        def doc(m):
            return type(m).table.__doc__, type(m).table.attrname
        model = Model(10)
        with ex(2) as pool:
            print(pool.submit(Model.predict, model, 3).result(timeout=30))
            print(list(pool.map(model.predict, [1, 2, 4], timeout=30)))
            print(pool.submit(doc, model).result(timeout=30))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["9", "[1, 4, 16]", "('squares', 'table')"], done.stdout


@pytest.mark.timeout(90)
def test_a_scripts_initializer_sets_the_globals_its_calls_read(shared: Farm) -> None:
    # The standard patterns: the initializer and the calls, both of the script, share its
    # globals in a pool's process -- a name it rebinds, a dict it fills. What a call keeps
    # there (a counter) stays, as it does; another executor's calls do not see any of it.
    done = shared.run_script(
        """
        STATE = None
        CACHE = {}
        SEEN = 0
        def init(x):
            global STATE
            STATE = x
            CACHE["db"] = "connected"
        def work(i):
            global SEEN
            SEEN += 1
            return STATE + i, SEEN
        def peek():
            return STATE, CACHE.get("db")
        with ex(2, None, init, (10,)) as pool:
            print(pool.submit(work, 1).result(timeout=30)[0])
            print(sorted(v for v, _ in pool.map(work, range(3), timeout=30)))
            counts = [pool.submit(work, 0).result(timeout=30)[1] for _ in range(8)]
            print(max(counts) > 1)
            print(pool.submit(peek).result(timeout=30))
        with ex(2) as plain:  # no initializer: the script's own values, not the other's
            print(plain.submit(peek).result(timeout=30))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [
        "11",
        "[10, 11, 12]",
        "True",
        "(10, 'connected')",
        "(None, None)",
    ], done.stdout


@pytest.mark.timeout(90)
def test_a_scripts_globals_kept_by_a_call_outlive_its_executor_and_program(
    tmp_path: Path,
) -> None:
    """docs/executor.md said a call's globals stay for the next calls "of the same function and
    executor"; the worker keeps them by the function's bytes, so the next executor, even of the
    next run of the script, counts on (a new ProcessPoolExecutor starts at 0)."""
    one = '[functions."farm.python"]\ntarget = "farm.executor.call:run_call"\nworkers = 1\n'
    script = """
        SEEN = 0
        def work():
            global SEEN
            SEEN += 1
            return SEEN
        for _ in range(2):
            with ex(1) as pool:
                print([pool.submit(work).result(timeout=30) for _ in range(2)])
    """
    with executor_farm(tmp_path, one, idle={"farm.python": 1}) as (up, key):
        first = Farm(up, key).run_script(script)
        second = Farm(up, key).run_script(script)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.splitlines() == ["[1, 2]", "[3, 4]"], first.stdout
    assert second.stdout.splitlines() == ["[5, 6]", "[7, 8]"], second.stdout


@pytest.mark.timeout(60)
def test_a_scripts_function_whose_global_will_not_pickle_names_that_global(
    shared: Farm,
) -> None:
    """The pool's processes have the script's globals, so a function using a global lock
    runs there; here the function travels by value with its globals, and the error says
    which one would not pickle, not only that some lock would not."""
    out = shared.run_script("""
        import functools
        import threading

        LOCK = threading.Lock()

        def locked(x):
            with LOCK:
                return x

        with ex() as pool:
            error = pool.submit(locked, 1).exception(timeout=30)
            print(type(error).__name__, error)
            print(*error.__notes__)
            print(*pool.submit(functools.partial(locked), 1).exception(timeout=30).__notes__)
            try:
                list(pool.map(locked, [1]))
            except TypeError as again:
                print(*again.__notes__)
            print(pool.submit(abs, -1).result(timeout=30))
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "TypeError cannot pickle '_thread.lock' object", out.stdout
    assert lines[1].startswith("farm: locked is a function of the script"), lines[1]
    assert "its global 'LOCK' cannot be pickled" in lines[1]
    assert lines[2] == lines[3] == lines[1]
    assert lines[4] == "1"


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
