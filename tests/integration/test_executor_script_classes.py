"""A script's classes through farm.Executor against a real `farm up`: a result leaves the
script's own class as it is (as ProcessPoolExecutor's, which names it), and a
``typing.NamedTuple`` of the script travels.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import setupfarm
from tests.helpers.setupfarm import Farm

# The fixture, taken by assignment: pytest finds it as if defined here.
shared = setupfarm.shared


@pytest.mark.timeout(90)
def test_a_result_of_a_scripts_class_leaves_that_class_as_the_script_has_it(
    shared: Farm, tmp_path: Path
) -> None:
    # cloudpickle found the script's class by its id and set on it every attribute the
    # worker's copy had: an update made while the call ran was lost, the methods became
    # copies with the call's globals, and what the call wrote to the class came back.
    done = shared.run_script(
        """
        import enum, os, time
        SCALE = 10
        GO = GO_PATH  # made once the script changed Item
        class Item:
            registry = {}
            hits = 0
            def __init__(self, n):
                self.n = n
            def get(self):
                return self.n * SCALE
        class Color(enum.Enum):
            RED = 1
            def label(self):
                return f"{self.name}x{SCALE}"
        def make(n):
            Item.hits += 1
            deadline = time.monotonic() + 20
            while not os.path.exists(GO) and time.monotonic() < deadline:
                time.sleep(0.005)
            return Item(n)
        def red():
            return Color.RED
        with ex(1) as pool:
            Item.registry["a"] = 1
            future = pool.submit(make, 2)
            Item.registry["b"] = 2
            open(GO, "w").close()
            back = future.result(timeout=30)
            print(type(back) is Item, back.n, sorted(Item.registry), Item.hits)
            SCALE = 99
            print(back.get(), Item(1).get())
            SCALE = 10
            got = pool.submit(red).result(timeout=30)
            SCALE = 7
            print(got is Color.RED, Color.RED.label())
        """.replace("GO_PATH", repr(str(tmp_path / "go")))
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["True 2 ['a', 'b'] 0", "198 99", "True REDx7"], (
        done.stdout
    )


@pytest.mark.timeout(90)
def test_a_scripts_named_tuple_travels_both_ways(shared: Farm) -> None:
    # The slots farm adds to a script's class were refused by NamedTupleMeta in the worker:
    # "Cannot overwrite NamedTuple attribute __slots__", for every such call.
    done = shared.run_script(
        """
        from typing import NamedTuple
        class Point(NamedTuple):
            x: int
            y: int = 0
        def norm(p):
            return abs(p.x) + abs(p.y)
        def flip(p):
            return Point(p.y, p.x)
        def origin():
            return Point(0)
        with ex(2) as pool:
            print(pool.submit(norm, Point(3, -4)).result(timeout=30))
            back = pool.submit(flip, Point(1, 2)).result(timeout=30)
            print(type(back) is Point, back, pool.submit(origin).result(timeout=30))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["7", "True Point(x=2, y=1) Point(x=0, y=0)"], done.stdout


@pytest.mark.timeout(90)
def test_a_result_runs_none_of_the_scripts_class_hooks_nor_takes_a_class_by_its_name(
    shared: Farm,
) -> None:
    # Before it looked for the script's class, cloudpickle made a skeleton one, which ran
    # __init_subclass__ in the script: its registry then held a class with no methods. And
    # a class the worker made under a name of the script's (a namedtuple of the fields it
    # read) must stay the worker's: taken by its name, it became the script's Row.
    done = shared.run_script(
        """
        import collections
        REGISTRY = {}
        class Plugin:
            def __init_subclass__(cls, **kw):
                super().__init_subclass__(**kw)
                REGISTRY[cls.__name__] = cls
        class CSV(Plugin):
            def parse(self, s):
                return s.split(",")
        def make():
            return CSV()
        Row = collections.namedtuple("Row", "a b")
        def read(line):
            head, values = line.split(";")
            made = collections.namedtuple("Row", head.split(","))
            return made(*values.split(","))
        class Reporter(Exception):  # the name of a class of the worker's own __main__
            pass
        def boom():
            raise Reporter("a", "b")
        with ex(1) as pool:
            back = pool.submit(make).result(timeout=30)
            print(REGISTRY["CSV"] is CSV, type(back) is CSV, REGISTRY["CSV"]().parse("a,b"))
            row = pool.submit(read, "name,city;ann,paris").result(timeout=30)
            print(type(row) is Row, row)
            try:
                pool.submit(boom).result(timeout=30)
            except Reporter as exc:
                print(repr(exc))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "True True ['a', 'b']",
        "False Row(name='ann', city='paris')",
        "Reporter('a', 'b')",
    ], done.stdout


@pytest.mark.timeout(90)
def test_a_workers_class_keeps_what_its_initializer_and_its_calls_set_there(shared: Farm) -> None:
    # As in a pool's process, which has the script's classes once: each call put the
    # script's class attributes back on the worker's class, so what the initializer set
    # there (one connection per worker) was undone, and a call's count went on or started
    # over depending on whether the worker kept the call's function unpickled.
    done = shared.run_script(
        """
        import os
        class Cfg:
            conn = None
            calls = 0
        def init():
            Cfg.conn = f"conn-{os.getpid()}"
        def work(x):
            Cfg.calls += 1
            return os.getpid(), Cfg.conn, Cfg.calls
        def work_on(cfg):
            Cfg.calls += 1
            return os.getpid(), Cfg.conn, Cfg.calls
        with ex(1, None, init) as pool:
            got = [pool.submit(work, 0).result(timeout=30) for _ in range(3)]
            got += [pool.submit(work_on, Cfg()).result(timeout=30) for _ in range(3)]
        counts = {}
        for pid, conn, calls in got:
            counts[pid] = counts.get(pid, 0) + 1
            assert conn == f"conn-{pid}", (conn, pid)
            assert calls == counts[pid], got
        print("ok", Cfg.conn, Cfg.calls)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:1] == ["ok None 0"], done.stdout
