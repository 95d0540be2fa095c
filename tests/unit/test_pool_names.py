"""Which names a farm.toml pool may have and serve: any function name farm's job server
takes (farm.protocol.codec.name_problem: Perl's App::reverse, é), but for what names a pool's
workers and carries its functions (farm.config.pooltables); and `farm scale` of such a pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm import config
from farm.pools.control import parse_scale
from tests.helpers.configs import error_of, write

POOLS = """
[functions."é"]
target = "workers.text:reverse"
workers = 1

[functions."50%off"]
target = "workers.text:reverse"
workers = 1

[functions.perl]
target = "workers.text:reverse"
workers = 1
functions = ["App::reverse", "App::Text::upper", "ünï.cödé"]
"""


def test_a_pool_may_serve_any_name_the_job_server_takes(tmp_path: Path) -> None:
    # Refused: "must name functions like "reverse" (letters, digits, _ . -; at most 64)",
    # though docs/client.md tells Perl users to join a prefix with ':', and farm's server
    # serves the name; and [functions."é"] "function names use letters" (é is one).
    loaded = config.load(write(tmp_path, POOLS))
    assert loaded.functions["é"].functions == ("é",)
    assert loaded.functions["50%off"].functions == ("50%off",)
    served = loaded.functions["perl"].functions
    assert served == ("App::reverse", "App::Text::upper", "ünï.cödé")


@pytest.mark.parametrize(
    ("table", "key", "why"),
    [
        # the server's own rule (name_problem), as it words it
        ('[functions."up\\n"]', 'functions."up\\n"', "a pool's name holds a control character"),
        ('[functions.p]\nfunction = "a\\tb"', "functions.p.function", "holds a control"),
        ('[functions.p]\nfunctions = [""]', "functions.p.functions", 'name "" is empty'),
        (
            f'[functions.p]\nfunctions = ["{"x" * 513}"]',
            "functions.p.functions",
            "is longer than 512 bytes",
        ),
        # what the supervisor passes a pool's functions on in
        ('[functions.p]\nfunctions = ["a b"]', "functions.p.functions", "split at it"),
        ('[functions.p]\nfunction = "a,b"', "functions.p.function", "$FARM_FUNCTION"),
        ('[functions."a b"]', 'functions."a b"', "admin lines split at it"),
        # what names a pool's workers and a change of its size
        ('[functions."a#b"]', 'functions."a#b"', "holds '#' (POOL#SLOT names its workers)"),
        ('[functions."a=b"]', 'functions."a=b"', "holds '=' (farm scale reads NAME=COUNT)"),
        # bytes, not characters: 33 é are 66 bytes, past a Python worker's client id
        (f'[functions."{"é" * 33}"]', f'functions."{"é" * 33}"', "longer than 64 bytes"),
        ('[functions.p]\nfunctions = "rev"', "functions.p.functions", "must name functions"),
        # whitespace at an edge, Unicode's too: `farm scale` strips it ("\u3000=2" read
        # "=2", not NAME=COUNT; "\u00a0x=2" named pool x), and it is unseen where shown
        ('[functions."\\u00a0x"]', 'functions."\\u00a0x"', "starts with whitespace '\\xa0'"),
        ('[functions.p]\nfunctions = ["\\u3000"]', "functions.p.functions", "with whitespace"),
        ('[functions.p]\nfunction = "x\\u2003"', "functions.p.function", "ends with whitespace"),
    ],
)
def test_a_name_that_cannot_be_served_is_one_line_naming_why(
    tmp_path: Path, table: str, key: str, why: str
) -> None:
    body = "" if "\n" in table else '\ntarget = "workers.text:reverse"'
    if "\n" in table:
        table = table.replace("\n", '\ntarget = "workers.text:reverse"\n', 1)
    message = error_of(tmp_path, f"{table}{body}\nworkers = 1\n")
    assert f": {key}: " in message, message
    assert why in message, message


def test_a_pool_named_past_the_old_rule_fits_its_workers_client_id(tmp_path: Path) -> None:
    # 64 bytes: "farm:POOL#SLOT:PID" (4-digit slot, 7-digit pid) is within the server's 127.
    name = "é" * 32
    assert len(f"farm:{name}#1023:4194304".encode()) <= 127
    assert config.load(write(tmp_path, POOLS.replace('"é"', f'"{name}"'))).functions[name]


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("App::reverse=2", ("App::reverse", "=", 2)),  # by the function the pool serves
        ("é=+1", ("é", "+", 1)),
        ("50%off=auto", ("50%off", "=", None)),
        ("a\u3000b=2", ("a\u3000b", "=", 2)),  # within a name, not at its edges
        ("\u00a0é=1\u3000", ("é", "=", 1)),  # around the argument: no name has it there
    ],
)
def test_farm_scale_reads_every_name_a_pool_may_have(
    arg: str, parsed: tuple[str, str, int | None]
) -> None:
    # "'App::reverse=2' is not NAME=COUNT, ...": it read ASCII letters, digits and _ . -.
    assert parse_scale(arg) == parsed


def test_a_refused_pool_name_is_quoted_readably_and_on_one_line(tmp_path: Path) -> None:
    # é as it is (json.dumps wrote \u00e9); a C1 control (NEL, a line break to splitlines)
    # still escaped, as json.dumps leaves it raw.
    long = "é" * 33
    assert f'functions."{long}": ' in error_of(tmp_path, f'[functions."{long}"]\ntarget = "x:y"')
    said = error_of(tmp_path, '[functions."a\\u0085b"]\ntarget = "x:y"')
    assert 'functions."a\\u0085b": ' in said and len(said.splitlines()) == 1
