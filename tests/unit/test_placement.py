"""Where workers run: each slot keeps its core across restarts, and pools spread over the cores."""

from __future__ import annotations

from farm.pools.slots import core_for


def test_slots_are_stable_and_spread() -> None:
    cpus = [0, 1, 2, 3]
    assert [core_for(cpus, 0, k) for k in range(6)] == [0, 1, 2, 3, 0, 1]
    assert [core_for(cpus, 2, k) for k in range(3)] == [2, 3, 0]  # the next pool continues
