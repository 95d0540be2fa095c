"""``Executor.map(..., buffersize=N)`` (Python 3.14's): the iterables are read lazily, N
chunks ahead of the results asked for, against a real `farm up`.

The first tests adapt (our code, same checks) CPython's ExecutorTest.test_map_buffersize*
(Lib/test/test_concurrent_futures/executor.py); the rest are farm's: chunks, a map left
early, and a function large enough to travel as a spill file that the map keeps until it
ends.
"""

from __future__ import annotations

import functools
import gc
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.calls import add, size_plus
from tests.helpers.farmproc import FarmUp, executor_farm
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def farm_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FarmUp, Path]]:
    with executor_farm(tmp_path_factory.mktemp("buffersize")) as up:
        yield up


@pytest.fixture
def ex(farm_up: tuple[FarmUp, Path]) -> Iterator[farm.Executor]:
    up, key = farm_up
    executor = farm.Executor(2, servers=[f"unix:{up.unix}"], key_file=str(key))
    yield executor
    executor.shutdown(wait=True)


class Counted:
    """An iterator that counts what was read from it."""

    def __init__(self, values: Iterator[int]) -> None:
        self.values = values
        self.read = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> int:
        value = next(self.values)
        self.read += 1
        return value


# -- CPython's ExecutorTest.test_map_buffersize* --


@pytest.mark.parametrize("buffersize", ["foo", 2.0])
def test_map_buffersize_type_validation(ex: farm.Executor, buffersize: object) -> None:
    with pytest.raises(TypeError, match="buffersize must be an integer or None"):
        ex.map(str, range(4), buffersize=buffersize)  # type: ignore[arg-type]


@pytest.mark.parametrize("buffersize", [0, -1])
def test_map_buffersize_value_validation(ex: farm.Executor, buffersize: int) -> None:
    with pytest.raises(ValueError, match="buffersize must be None or > 0"):
        ex.map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_map_buffersize(ex: farm.Executor, buffersize: int) -> None:
    assert list(ex.map(str, range(4), buffersize=buffersize)) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_map_buffersize_on_multiple_iterables(ex: farm.Executor, buffersize: int) -> None:
    ints = range(4)
    assert list(ex.map(add, ints, ints, buffersize=buffersize)) == [0, 2, 4, 6]


def test_map_buffersize_on_infinite_iterable(ex: farm.Executor) -> None:
    results = ex.map(str, itertools.count(), buffersize=2)
    assert [next(results, None) for _ in range(3)] == ["0", "1", "2"]


def test_map_buffersize_on_multiple_infinite_iterables(ex: farm.Executor) -> None:
    results = ex.map(add, itertools.count(), itertools.count(), buffersize=2)
    assert [next(results, None) for _ in range(3)] == [0, 2, 4]


def test_map_buffersize_on_empty_iterable(ex: farm.Executor) -> None:
    assert next(ex.map(str, [], buffersize=2), None) is None


def test_map_buffersize_without_iterable(ex: farm.Executor) -> None:
    assert next(ex.map(str, buffersize=2), None) is None


def test_map_buffersize_when_buffer_is_full(ex: farm.Executor) -> None:
    ints = iter(range(4))
    ex.map(str, ints, buffersize=2)
    ex.shutdown(wait=True)  # the calls handed over are done
    assert next(ints) == 2, "only buffersize values were read from the iterable"


# -- farm's own --


def test_buffersize_counts_chunks_and_reads_one_more_per_result(ex: farm.Executor) -> None:
    """As ProcessPoolExecutor's in 3.14, buffersize counts chunks (its tasks), not calls."""
    values = Counted(iter(range(100)))
    results = ex.map(str, values, chunksize=10, buffersize=2)
    assert values.read == 20
    assert next(results) == "0"
    assert values.read == 30, "the first result asked for read one chunk more"
    assert list(results) == [str(i) for i in range(1, 100)]
    assert values.read == 100


def test_a_map_left_early_reads_no_further(ex: farm.Executor) -> None:
    """What buffersize is for: leaving a map early leaves the rest of an endless input
    unread, so unrun (without it, the map would read the input for ever)."""
    values = Counted(itertools.count())
    for result in ex.map(add, values, buffersize=3):
        if result == 5:
            break
    assert values.read == 3 + 6, "three ahead, and one more per result asked for"


def test_a_large_function_stays_in_its_file_until_the_map_ends(ex: farm.Executor) -> None:
    """A function over 1 MiB travels as a spill file that calls share and that goes when
    the last call using it is done. A map with buffersize makes calls later: the file must
    last until the map ends, and go then."""
    fn = functools.partial(size_plus, b"x" * (2 << 20))
    results = ex.map(fn, range(6), buffersize=1)
    wait_for("the first call's job to end", lambda: ex._pump._in_flight == 0)
    # The only call handed over is done: the next one, read now, still needs the file.
    assert next(results) == (2 << 20)
    assert list(results) == [(2 << 20) + i for i in range(1, 6)]
    # The last call's hold goes in its done-callback, which concurrent.futures runs after
    # it wakes result()'s waiter: a moment after, not before.
    wait_for("the map's function file to be released", lambda: ex._files._shared == {})
    wait_for("... and removed", lambda: ex._files._files == set())


def test_a_large_function_s_file_goes_when_the_map_fails_or_is_dropped_unstarted(
    ex: farm.Executor,
) -> None:
    # The map's hold on the file was released only by its iterator's end: never when the
    # input raised in the first read (no iterator), nor for an iterator never started.
    fn = functools.partial(size_plus, b"x" * (2 << 20))

    def bad() -> Iterator[int]:
        yield 1
        raise KeyError("input broke")

    with pytest.raises(KeyError, match="input broke"):
        ex.map(fn, bad(), buffersize=4)
    wait_for("the call sent to end", lambda: ex._pump._in_flight == 0 and not ex._pump._pending)
    # The call's own hold goes in its done-callback, which the pump runs as it settles the
    # future, after it counts the job out of _in_flight: a moment after, not before.
    wait_for("the failed map's hold to go with it", lambda: ex._files._shared == {})


def test_a_large_function_s_file_goes_with_a_map_dropped_before_its_first_result(
    ex: farm.Executor,
) -> None:
    fn = functools.partial(size_plus, b"x" * (2 << 20))
    unstarted = ex.map(fn, range(3), buffersize=1)
    wait_for("its first call to end", lambda: ex._pump._in_flight == 0)
    del unstarted
    gc.collect()
    # As above: the first call's hold goes in its done-callback, a moment after _in_flight.
    wait_for("the dropped map's holds to go", lambda: ex._files._shared == {})


def test_a_list_grown_while_a_lazy_map_reads_it_is_read_to_its_new_end(
    ex: farm.Executor,
) -> None:
    """As builtins.map (and CPython's Executor.map with buffersize) over a list iterator."""
    values = [1, 2, 3, 4]
    results = ex.map(str, values, chunksize=2, buffersize=1)
    assert next(results) == "1"
    values.extend([5, 6, 7, 8])
    assert list(results) == [str(v) for v in range(2, 9)]


FORKED_READ = """
import os, sys
import farm

ex = farm.Executor(2, servers=[sys.argv[1]], key_file=sys.argv[2])
results = ex.map(abs, iter(range(-6, 0)), buffersize=2)
print("parent", next(results), flush=True)
pid = os.fork()
if pid == 0:
    try:
        next(results)
    except RuntimeError as exc:
        print("child refused:", "fork" in str(exc), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("parent", list(results), os.waitstatus_to_exitcode(status), flush=True)
ex.shutdown()
"""


def test_a_lazy_map_read_in_a_forked_child_raises_there(farm_up: tuple[FarmUp, Path]) -> None:
    # The calls read ahead are the parent's, whose replies the parent reads: the child's
    # next() waited for ever on the first of them. It raises at once, and the parent's
    # iterator reads on as if no child had been.
    up, key = farm_up
    run = subprocess.run(
        [sys.executable, "-c", FORKED_READ, f"unix:{up.unix}", str(key)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "parent 6",
        "child refused: True",
        "parent [5, 4, 3, 2, 1] 0",
    ], (run.stdout, run.stderr)
