"""CAN_DO_TIMEOUT's number, read by a scan: what the regex it replaces accepted, at a cost
that a long field cannot stretch (a local peer's 60 MB field held the server for seconds)."""

from __future__ import annotations

import re
import time

from hypothesis import given
from hypothesis import strategies as st

from farm.server.workerside import timeout_number

#: The regex the scan replaced: what it accepted is what the scan must accept.
OLD = re.compile(rb"\s*([+-]?\d+)(?:\.\d*)?\s*")

PIECES = st.sampled_from(
    [
        b" ",
        b"\t",
        b"\n",
        b"\v",
        b"\f",
        b"\r",
        b"+",
        b"-",
        b".",
        b"0",
        b"7",
        b"12",
        b"x",
        b"\x00",
        b"e",
    ]
)


def old(raw: bytes) -> bytes | None:
    found = OLD.fullmatch(raw)
    return None if found is None else found[1]


@given(st.lists(PIECES, max_size=12).map(b"".join))
def test_the_scan_reads_what_the_regex_read(raw):
    assert timeout_number(raw) == old(raw)


def test_known_fields():
    assert timeout_number(b"2.5") == b"2"
    assert timeout_number(b" -30 ") == b"-30"
    assert timeout_number(b"+7.") == b"+7"
    for bad in (b"", b" ", b".5", b"5x", b"5.5.5", b"--5", b"5 5"):
        assert timeout_number(bad) is None, bad


def fastest(field: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        timeout_number(field)
        best = min(best, time.perf_counter() - began)
    return best


def test_a_long_bad_field_costs_no_more_than_a_good_one_of_its_size():
    """5 MB of digits ending in a letter took the regex ~25x the time of 5 MB of digits
    alone (seconds at 60 MB), blanks alone ~15x blanks before a digit: it backtracked. The
    scan is one pass either way; the bound leaves room for noise."""
    size = 5_000_000
    digits, blanks = fastest(b"7" * size), fastest(b" " * size + b"5")
    assert fastest(b"7" * size + b"x") < 4 * digits + 0.01, digits
    assert fastest(b" " * size) < 4 * blanks + 0.01, blanks
    assert fastest(b" " * size + b"x") < 4 * blanks + 0.01, blanks
