"""farm.server.queues' WORK_STATUS numbers, read as gearmand reads them, in linear time.

The values are pinned against gearmand itself in
tests/integration/test_server_jobs_work.py (test_get_status_*_as_numbers); here the rules'
corners and their cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from farm.server.queues import status_denominator, status_number


@pytest.mark.parametrize(
    "sent, kept",
    [
        (b"0" * 100 + b"12", b"12"),  # leading zeros do not count as digits
        (b"-" + b"0" * 100 + b"12", b"4294967284"),
        (b"9" * 19, b"4294967295"),  # past LONG_MAX: clamped
        (b"1" + b"0" * 19, b"4294967295"),
        (b"9223372036854775807", b"4294967295"),
        (b"-9223372036854775808", b"0"),
        (b"\x0b\x0c\r\n 7", b"7"),  # isspace() in the C locale
        (b"\x1c7", b"0"),
    ],
)
def test_numerator_corners(sent, kept):
    assert status_number(sent) == kept


def test_denominator_stops_at_a_nul_as_snprintf_does():
    assert status_denominator(b"12\x00" + b"9" * 20) == b"12"
    assert status_denominator(b"9" * 11 + b"\x00") == b"1410065407"  # 9999999999, 32 bits
    assert status_denominator(b"9" * 12 + b"\x00") is None


def fastest(parse: Callable[[bytes], object], field: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        parse(field)
        best = min(best, time.perf_counter() - began)
    return best


@pytest.mark.parametrize("parse", [status_number])  # status_denominator reads 12 bytes at most
def test_a_long_blank_field_costs_no_more_than_one_ending_in_a_digit(parse):
    """A worker's all-blank WORK_STATUS field froze the server: the regex that read it
    backtracked through the blanks before failing, ~12x the time of the same blanks followed
    by a digit (seconds at 60 MB). Both are one pass now; the bound leaves room for noise."""
    size = 5_000_000
    blank = fastest(parse, b" " * size)
    ending_in_a_digit = fastest(parse, b" " * size + b"5")
    assert blank < 4 * ending_in_a_digit + 0.01, (blank, ending_in_a_digit)
