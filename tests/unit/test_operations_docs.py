"""docs/operations.md's config tables name every key farm.toml takes, and only those.

The keys farm takes are asked of the config reader itself: a key it does not know is
refused with the list of those it does ("unknown key; allowed: ...").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from farm import config
from farm.errors import ConfigError
from tests.helpers import ROOT

#: The sections of docs/operations.md whose tables document a farm.toml table.
SECTIONS = {
    "server": ("### `[server]`",),
    "supervisor": ("### `[supervisor]`",),
    "executor": ("### `[executor]`",),
    "functions": ("### `[functions.NAME]`", "### Command pools"),
}
POOL = '[functions.f]\ntarget = "tests.helpers.serving:reverse"\n'
UNKNOWN = "zz_not_a_key"


def documented(table: str) -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    keys: set[str] = set()
    for heading in SECTIONS[table]:
        start = text.index(heading)
        end = text.find("\n### ", start + 1)
        section = text[start : end if end != -1 else len(text)]
        for table_text in re.findall(r"^\| key \|.*?(?=^[^|]|\Z)", section, re.M | re.S):
            for first in re.findall(r"^\| (`[^|]*`) \|", table_text, flags=re.MULTILINE):
                keys |= set(re.findall(r"`(\w+)`", first))  # "`function` / `functions`"
    return keys


def accepted(table: str, tmp_path: Path) -> set[str]:
    path = tmp_path / "farm.toml"
    if table == "functions":
        path.write_text(POOL + f"{UNKNOWN} = 1\n")
    else:
        path.write_text(f"[{table}]\n{UNKNOWN} = 1\n" + POOL)
    with pytest.raises(ConfigError, match="unknown key; allowed: ") as refused:
        config.load(path)
    return set(str(refused.value).split("allowed: ", 1)[1].split(", "))


@pytest.mark.parametrize("table", list(SECTIONS))
def test_each_key_farm_takes_is_documented_and_nothing_else(table: str, tmp_path: Path) -> None:
    # [supervisor] metrics and log_format were taken but missing from the table.
    assert documented(table) == accepted(table, tmp_path)
