"""A command worker's output budget without processes: a burst, then a steady rate, and
what is over counted and reported once an interval (farm.pools.outputlimit)."""

from __future__ import annotations

from farm.pools.outputlimit import DROPS_EVERY, OUTPUT_BURST, OUTPUT_RATE, OutputLimit


def test_a_burst_passes_then_a_steady_rate() -> None:
    limit = OutputLimit()
    assert all(limit.admit(100.0) for _ in range(OUTPUT_BURST))
    assert not limit.admit(100.0)
    # one second later, one second's worth more, and no more
    admitted = sum(limit.admit(101.0) for _ in range(1000))
    assert admitted == int(OUTPUT_RATE)
    assert limit.dropped == 1 + 1000 - admitted


def test_a_quiet_worker_gets_its_burst_back_but_no_more() -> None:
    limit = OutputLimit(burst=5, rate=1.0)
    assert [limit.admit(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert sum(limit.admit(3600.0) for _ in range(10)) == 5


def test_drops_are_reported_once_an_interval_and_at_the_end() -> None:
    limit = OutputLimit(burst=1, rate=1.0)
    assert limit.admit(10.0) and not limit.admit(10.0) and not limit.admit(10.0)
    assert limit.drops_due(10.0 + DROPS_EVERY / 2) == (0, 0.0)  # not yet: one line an interval
    assert limit.drops_due(10.0 + DROPS_EVERY) == (2, DROPS_EVERY)
    assert limit.drops_due(10.0 + DROPS_EVERY) == (0, 0.0)  # said once
    assert limit.admit(20.0) and not limit.admit(20.0) and not limit.admit(20.5)
    assert limit.drops_due(22.0, final=True) == (2, 2.0)  # its end: whatever is left, at once


def test_nothing_dropped_nothing_to_report() -> None:
    limit = OutputLimit()
    assert limit.admit(0.0)
    assert limit.drops_due(3600.0, final=True) == (0, 0.0)
