"""A call that raised keeps none of its frames in the worker once its outcome is made: its
traceback held them (its locals, a 300 MB list), and the worker loop's frame that holds the
outcome, a cycle that only a full collection freed; the next call on that worker failed
with MemoryError for it (farm.executor.outcomes.raised)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from farm.executor.outcomes import raised
from farm.executor.payload import ERROR


class Big:
    """Stands for a call's large local."""


@pytest.fixture
def no_collection() -> Iterator[None]:
    """Only reference counts free objects meanwhile, as between a worker's collections."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_the_locals_of_a_call_that_raised_are_freed_with_it(no_collection: None) -> None:
    refs: list[weakref.ref[Big]] = []

    def call() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        raise ValueError("too big")

    try:
        call()
    except ValueError as exc:
        outcome = raised(exc)  # held by this frame, as the worker's loop holds it
    assert outcome[0] == ERROR and "too big" in outcome[2]  # the traceback is told
    assert 'raise ValueError("too big")' in outcome[2]
    assert refs[0]() is None, "the call's locals live on in its outcome's traceback"
