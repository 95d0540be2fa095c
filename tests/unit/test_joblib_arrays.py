"""farm.joblib.largest_array: which of a joblib batch's arguments loky would memory-map."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from farm.joblib import largest_array


def batch(*args: object, **kwargs: object) -> SimpleNamespace:
    """A joblib BatchedCalls as the backend reads it: its calls' (function, args, kwargs)."""
    return SimpleNamespace(items=[(len, (), {}), (len, args, kwargs)])


@pytest.mark.parametrize("limit", [1 << 20, 1e6, "1M", "1024K"])
def test_an_array_over_max_nbytes_in_any_form_joblib_takes(limit: object) -> None:
    # joblib takes max_nbytes as a number or as "1M"; Parallel converts the string, but
    # what a backend is handed must not break every submit (TypeError: int > str).
    big = np.zeros(2 << 20, dtype=np.uint8)
    assert largest_array(batch(big), limit) == 2 << 20  # type: ignore[arg-type]
    assert largest_array(batch(x=big), limit) == 2 << 20  # type: ignore[arg-type]
    assert largest_array(batch(big[:100], 7), limit) == 0  # type: ignore[arg-type]


def test_nothing_is_said_with_memmapping_off_or_for_another_batch() -> None:
    big = np.zeros(2 << 20, dtype=np.uint8)
    assert largest_array(batch(big), None) == 0
    assert largest_array(object(), 1) == 0  # not a BatchedCalls: no items
