"""farm.executor.functions: what a worker keeps of its calls' functions, without a farm.

joblib hands the farm each batch as its own callable (a BatchedCalls holding the batch's
arguments), so a worker sees a new, possibly large, function with every job: keeping them
all grew a worker by each batch's arrays (100 MB each) until it was killed."""

from __future__ import annotations

import functools
import gc
import operator
import pickle
import weakref
from pathlib import Path

import pytest

from farm.executor import functions, spill


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # What other tests of this process loaded neither counts here nor goes.
    monkeypatch.setattr(functions, "_kept", {})
    monkeypatch.setattr(functions, "_kept_bytes", 0)


def loaded(fn_bytes: bytes) -> weakref.ref[object]:
    return weakref.ref(functions.load(fn_bytes, None))


def test_large_functions_are_kept_up_to_a_byte_budget_the_latest_always(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(functions, "MAX_KEPT_BYTES", 4 << 20)
    pickles = [
        pickle.dumps(functools.partial(operator.add, bytes([n]) * (1 << 20))) for n in range(8)
    ]
    first = loaded(pickles[0])
    for data in pickles[1:]:
        functions.load(data, None)
    gc.collect()
    assert first() is None, "the oldest 1 MiB function outlived a 4 MiB budget"
    latest = functions.load(pickles[-1], None)
    assert functions.load(pickles[-1], None) is latest  # kept: unpickled once
    monkeypatch.setattr(functions, "MAX_KEPT_BYTES", 1 << 20)  # smaller than any of them
    alone = functions.load(pickles[0], None)
    assert functions.load(pickles[0], None) is alone  # over the budget on its own, still kept


def test_a_function_in_use_outlives_a_stream_of_large_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker serving joblib's one-batch functions and a script's own function between
    # them: the one used every other call must not be pushed out and unpickled again.
    monkeypatch.setattr(functions, "MAX_KEPT_BYTES", 4 << 20)
    hot = pickle.dumps(functools.partial(operator.add, b"hot"))
    first = functions.load(hot, None)
    for n in range(8):
        functions.load(pickle.dumps(functools.partial(operator.add, bytes([n]) * (1 << 20))), None)
        assert functions.load(hot, None) is first, f"unpickled again after batch {n}"


def test_a_function_read_from_a_spill_file_weighs_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its pickle in the job is a reference of a few hundred bytes: the file is what it holds.
    monkeypatch.setattr(functions, "MAX_KEPT_BYTES", 4 << 20)
    settings = spill.SpillSettings(tmp_path / "spill", 64 << 20)

    def by_file(n: int) -> bytes:
        data = pickle.dumps(functools.partial(operator.add, bytes([n]) * (3 << 20)))
        return pickle.dumps(spill.ByFile(spill.write(settings, data, "k")))

    first = loaded(by_file(0))
    functions.load(by_file(1), None)
    gc.collect()
    assert first() is None, "two 3 MiB functions from files were both kept within 4 MiB"
