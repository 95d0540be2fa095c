"""farm.Executor against ProcessPoolExecutor: the same small programs, the same outcomes.

Hypothesis writes programs of ``submit`` (calls that return, nap, raise exceptions of
several kinds, one that will not pickle, SystemExit and KeyboardInterrupt, return what
will not pickle or a result over the spill threshold; an argument that will not pickle),
``map`` (chunksize 1 to 5, one or two iterables, a timeout, ``buffersize``, a generator
that may break, the iterator left early), ``as_completed``, ``wait``, ``shutdown`` and
what follows it, and ``cancel()`` of calls that cannot have started (tests/helpers/programs.py
says how each stays deterministic). Each runs on a fresh ``farm.Executor(2)`` of a real
`farm up` with two workers, and on a fresh ``ProcessPoolExecutor(2)``; what each shows must
be the same. Python 3.11's pool has no ``buffersize``: there, 3.14's is emulated (its
reading of the iterables, the pool's outcomes). The documented differences
(docs/executor.md) are left out of the programs.

A few examples run in the suite (a fixed set: ``derandomize``). To look for differences,
run it longer, with new programs each time:
``FARM_DIFFERENTIAL_EXAMPLES=300 python -m pytest tests/integration/test_executor_differential.py``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import farm
from tests.helpers.calls import POOL_CONTEXT
from tests.helpers.differential import KINDS
from tests.helpers.farmproc import FarmUp, executor_farm
from tests.helpers.gate import Gate
from tests.helpers.programops import (
    AsCompleted,
    Blocked,
    Cancel,
    Map,
    Op,
    Settle,
    Shutdown,
    Submit,
    Wait,
)
from tests.helpers.programs import HELD, Run

EXAMPLES = int(os.environ.get("FARM_DIFFERENTIAL_EXAMPLES", "0"))

pytestmark = pytest.mark.timeout(60 + 10 * EXAMPLES)

#: Mostly calls that return, so that maps get past their first chunk.
kinds = st.one_of(st.just("value"), st.just("value"), st.sampled_from(KINDS))
which = st.integers(0, 40)


@st.composite
def maps(draw: st.DrawFn, held: bool) -> Map:
    n = draw(st.integers(0, 12))
    # act1(x) does KINDS[x % len(KINDS)]
    xs = tuple(KINDS.index(draw(kinds)) + len(KINDS) * draw(st.integers(0, 3)) for _ in range(n))
    two = draw(st.booleans())
    generator = not two and draw(st.booleans())
    return Map(
        xs=xs,
        kinds=tuple(draw(kinds) for _ in range(max(0, n - draw(st.integers(0, 2)))))
        if two
        else None,
        chunksize=draw(st.integers(1, 5)),
        # While held, a map waits for nothing: its first result times out.
        timeout=HELD if held else draw(st.sampled_from([None, 30.0])),
        buffersize=draw(st.one_of(st.none(), st.integers(1, 3))),
        take=draw(st.one_of(st.none(), st.integers(0, n + 1))),
        generator=generator,
        raise_at=draw(st.one_of(st.none(), st.integers(0, n))) if generator else None,
    )


submits = st.builds(Submit, kinds, st.integers(0, 50), st.booleans())
unpicklable_arguments = st.builds(Submit, kinds, st.just(0), st.booleans(), st.just(True))
waits = st.builds(
    Wait,
    st.tuples(which, which, which),
    st.sampled_from(["FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"]),
)
as_completeds = st.builds(AsCompleted, st.tuples(which, which, which))

#: While the workers are held: no Settle (it would wait for good), no argument that will not
#: pickle (farm fails its future at submit, the pool when it hands the call to a process).
held_ops = st.one_of(
    submits,
    st.builds(Cancel, which),
    maps(held=True),
    waits,
    as_completeds,
    st.builds(Shutdown, st.just(False), st.booleans()),
)
ops: st.SearchStrategy[Op] = st.one_of(
    submits,
    submits,
    unpicklable_arguments,
    maps(held=False),
    st.builds(Settle, which),
    waits,
    as_completeds,
    st.builds(Shutdown, st.booleans(), st.booleans()),
    st.builds(Blocked, st.lists(held_ops, max_size=6).map(tuple)),
)
programs = st.lists(ops, max_size=8)


def act1_arguments(*kinds: str) -> tuple[int, ...]:
    """act1's arguments that do ``kinds`` in turn (each value a different one)."""
    return tuple(KINDS.index(kind) + len(KINDS) * (i + 1) for i, kind in enumerate(kinds))


#: A map over one iterable in chunks, whose second call raises StopIteration: the worker
#: ran such a chunk with builtins.map, which took it for the chunk's end, and the map gave
#: the other chunks' values in its place, with no error (the pool: RuntimeError, as
#: its map's generator gets it). Lazily (buffersize) too.
STOPPED = act1_arguments("value", "StopIteration", "value", "value", "value", "value")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FarmUp, Path, Path]]:
    tmp = tmp_path_factory.mktemp("farm")
    with executor_farm(tmp) as (farm_up, key):
        yield farm_up, key, tmp


def test_programs_end_as_on_a_process_pool(up: tuple[FarmUp, Path, Path]) -> None:
    farm_up, key, tmp = up
    gates = itertools.count()

    def gate() -> Gate:
        return Gate(tmp / f"gate-{next(gates)}")

    @settings(
        max_examples=EXAMPLES or 20,
        derandomize=not EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        # No shrinking: it runs the failing program hundreds of times over (minutes), and
        # programs are short: the first that fails is reported as it was made.
        phases=[Phase.explicit, Phase.generate],
    )
    @given(programs)
    @example([Map(xs=STOPPED, chunksize=3)])
    @example([Map(xs=STOPPED, chunksize=2, buffersize=1), Submit("StopIteration", 1)])
    def same(program: list[Op]) -> None:
        ex = farm.Executor(2, servers=[f"unix:{farm_up.unix}"], key_file=str(key))
        on_farm = Run(ex, gate).run(program)
        pool = ProcessPoolExecutor(2, mp_context=POOL_CONTEXT)
        on_pool = Run(pool, gate, pool=True).run(program)
        assert _differences(on_farm, on_pool) == []

    same()


def _differences(on_farm: list[Any], on_pool: list[Any]) -> list[str]:
    """What one run saw and the other did not; a call that a shutdown may have cancelled
    (timing decides) may end cancelled in one and not in the other."""
    out = [f"farm {a}\npool {b}" for a, b in zip(on_farm, on_pool, strict=False) if not _same(a, b)]
    if len(on_farm) != len(on_pool):
        out.append(f"farm saw {len(on_farm)} things, the pool {len(on_pool)}")
    return out


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if a[0] == b[0] == "future" and a[1] == b[1]:
        outcomes = {a[2][0], b[2][0]}
        return outcomes == {"cancelled", "not cancelled"}
    return False
