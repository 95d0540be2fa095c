"""Rules docs/architecture.md gives one home ("One home for each rule"), written there
alone: a second copy drifted apart before (the SQLite header read three ways, two of them
disagreeing on a file cut off within it)."""

from __future__ import annotations

import ast
from collections.abc import Callable

import pytest

from tests.helpers import ROOT


def homes(matches: Callable[[object], bool]) -> list[str]:
    """The farm modules holding a constant ``matches`` accepts, by path; not a piece of an
    f-string (``f"farm.{name}"`` names a module or a logger, no rule)."""
    found = []
    for path in sorted((ROOT / "farm").rglob("*.py")):
        tree = ast.parse(path.read_text())
        pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        if any(
            isinstance(n, ast.Constant) and id(n) not in pieces and matches(n.value)
            for n in ast.walk(tree)
        ):
            found.append(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("rule", "matches", "home"),
    [
        (
            "SQLite's header",
            lambda v: isinstance(v, bytes) and v.startswith(b"SQLite format"),
            "farm/server/storetables.py",
        ),
        ("the reserved prefix", lambda v: v in ("farm.", b"farm."), "farm/protocol/codec.py"),
    ],
)
def test_a_rule_is_written_in_its_home_alone(
    rule: str, matches: Callable[[object], bool], home: str
) -> None:
    assert homes(matches) == [home], rule
