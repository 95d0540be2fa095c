"""What code ported from ProcessPoolExecutor meets: what the pool refuses to pickle and the
farm takes (docs/executor.md, "What the pool refuses and the farm takes"), against `farm up`."""

from __future__ import annotations

import functools
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers.calls import Tally, append_to, identity
from tests.helpers.farmproc import executor_farm


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[farm.Executor]:
    with executor_farm(tmp_path_factory.mktemp("porting")) as (up, key):
        pool = farm.Executor(servers=[f"unix:{up.unix}"], key_file=str(key))
        yield pool
        pool.shutdown()


def local_things() -> tuple[Any, Any]:
    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

    return (lambda: 7), Local(3)


@pytest.mark.timeout(60)
def test_local_functions_and_classes_travel_both_ways(ex: farm.Executor) -> None:
    fn, obj = ex.submit(local_things).result(timeout=30)  # the pool: Can't pickle local object
    assert fn() == 7 and obj.v == 3
    assert ex.submit(identity, obj).result(timeout=30).v == 3


@pytest.mark.timeout(60)
def test_a_text_file_read_arrives_as_its_text_and_what_cloudpickle_refuses_fails(
    ex: farm.Executor, tmp_path: Path
) -> None:
    text = tmp_path / "lines.txt"
    text.write_text("one\ntwo\n")
    with open(text) as f:
        f.readline()
        copy = ex.submit(identity, f).result(timeout=30)
    assert isinstance(copy, io.StringIO) and copy.readline() == "two\n"
    with open(text, "rb") as raw, socket.socket() as sock:
        for refused in (raw, sock, threading.Lock(), (i for i in range(2))):
            with pytest.raises(TypeError, match="cannot pickle"):
                ex.submit(identity, refused).result(timeout=30)


@pytest.mark.timeout(90)
def test_each_call_gets_a_fresh_copy_of_a_callable_with_state(ex: farm.Executor) -> None:
    """ProcessPoolExecutor pickles the callable with every call, so what one call leaves in
    a bound method's instance, a partial's arguments or a callable object, the next call
    does not see; a chunk's calls share one copy. The workers keep an unpickled function
    (its globals live on, as in a pool's process) but not the state a callable carries."""
    tally = Tally()
    for fn in (tally.add, tally, functools.partial(append_to, [])):
        assert [ex.submit(fn, i).result(timeout=30) for i in range(3)] == [[0], [1], [2]]
        # Many calls waiting travel in batches: still one copy per call.
        assert list(ex.map(fn, range(40))) == [[i] for i in range(40)]
        chunks = list(ex.map(fn, range(6), chunksize=3))
        assert chunks == [[0], [0, 1], [0, 1, 2], [3], [3, 4], [3, 4, 5]]
    assert tally.seen == []
