"""`farm scale NAME=N|+N|-N`: the arguments as the control socket receives them."""

from __future__ import annotations

import pytest

from farm.pools.control import parse_scale


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [("resize=32", ("resize", "=", 32)), ("a.b=+2", ("a.b", "+", 2)), ("t=-1", ("t", "-", 1))],
)
def test_parse_scale(arg: str, parsed: tuple[str, str, int]) -> None:
    assert parse_scale(arg) == parsed
