"""farm.Executor running a script's own code (its ``__main__``) against a real `farm up`: its
classes, partials, cached and singledispatch functions and cached properties travel, its
initializer sets the globals its calls read, and what will not pickle is named.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import setupfarm
from tests.helpers.farmproc import executor_farm
from tests.helpers.setupfarm import Farm

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared = setupfarm.shared


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
def test_a_scripts_slotted_classes_come_back_from_a_call(shared: Farm) -> None:
    # cloudpickle rebuilt them in the worker without their slots: an instance made there
    # came back as a dict of state the script's class could not take ("'SP' object has no
    # attribute '__dict__'"), where ProcessPoolExecutor's came back.
    done = shared.run_script(
        """
        import dataclasses
        @dataclasses.dataclass(slots=True)
        class SP:
            x: int
        class Pair:
            __slots__ = ("a", "b")
            def __init__(self, a, b):
                self.a, self.b = a, b
        def make(x):
            return SP(x)
        def swap(p):
            return Pair(p.b, p.a)
        with ex(2) as pool:
            print(pool.submit(make, 1).result(timeout=30))
            back = pool.submit(swap, Pair(1, 2)).result(timeout=30)
            print(type(back) is Pair, back.a, back.b)
            print(list(pool.map(make, [2, 3], timeout=30)))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "SP(x=1)",
        "True 2 1",
        "[SP(x=2), SP(x=3)]",
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
def test_data_an_initializer_only_read_stays_the_calls_newer_copy(shared: Farm) -> None:
    # The initializer travels once, with the executor; each call with the script's values
    # of its submit. A dict the initializer read but did not fill was given to the calls as
    # the initializer had it, so a setting changed after the executor was made was unseen
    # (as without an initializer, and in the pool, the call sees 5).
    done = shared.run_script(
        """
        CFG = {"threshold": 1}
        SEEN = []
        def init():
            SEEN.append(CFG["threshold"])
        def work():
            return CFG["threshold"], SEEN
        with ex(1, None, init) as pool:
            CFG["threshold"] = 5
            print(pool.submit(work).result(timeout=30))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:1] == ["(5, [1])"], done.stdout


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
