"""`farm scale NAME=N|+N|-N`: the arguments as the control socket receives them."""

from __future__ import annotations

import pytest

from farm.pools.control import parse_scale


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("resize=32", ("resize", "=", 32)),
        ("a.b=+2", ("a.b", "+", 2)),
        ("t=-1", ("t", "-", 1)),
        ("resize=auto", ("resize", "=", None)),  # one per core, as workers = "auto"
        # judged by value, not by its digits: "0000032 workers is more than a pool may have"
        ("resize=0000032", ("resize", "=", 32)),
        ("t=+0", ("t", "+", 0)),
        # past int()'s 4300 digits, as written
        pytest.param("t=" + "0" * 5000 + "7", ("t", "=", 7), id="t=0...07"),
    ],
)
def test_parse_scale(arg: str, parsed: tuple[str, str, int | None]) -> None:
    assert parse_scale(arg) == parsed


@pytest.mark.parametrize("arg", ["resize=+auto", "resize=Auto", "resize=", "=3", "resize=1.5"])
def test_parse_scale_refuses(arg: str) -> None:
    with pytest.raises(ValueError, match="NAME=auto"):
        parse_scale(arg)


@pytest.mark.parametrize(
    "arg", ["resize=1000000", "resize=+99999999999999999", "resize=-1234567", "t=0001000000"]
)
def test_a_count_past_any_pool_is_named_as_one(arg: str) -> None:
    # It was "is not NAME=COUNT, NAME=+N, ...", of an argument in just that form.
    count = arg.split("=")[1].lstrip("+-0")
    with pytest.raises(ValueError) as info:
        parse_scale(arg)
    assert str(info.value) == f"{arg!r}: {count} workers is more than a pool may have"
