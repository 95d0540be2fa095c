"""`farm check`'s reading of a config: every [functions.NAME] table that does not read is
said, each in the line `farm up` would stop on, and the pools that do read are kept."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from farm import config
from farm.errors import ConfigError

BAD_POOLS = """
[server]
listen = ["127.0.0.1:4999"]
store = "none"

[supervisor]
control = "{tmp}/control.sock"
metrics = "off"

[functions.good]
target = "workers.text:reverse"
workers = 2

[functions.missing]
target = "workers.nothere:f"

[functions.negative]
target = "workers.text:reverse"
workers = -1

[functions.notexec]
command = ["./worker.sh"]
workers = 1
"""


def test_every_bad_pool_is_gathered_and_the_good_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    path.write_text(textwrap.dedent(BAD_POOLS.format(tmp=tmp_path)))
    (tmp_path / "worker.sh").write_text("#!/bin/sh\n")  # mode 644: not executable
    with pytest.raises(ConfigError) as first:  # farm up's reading: the first one stops it
        config.load(path)
    gathered: list[ConfigError] = []
    cfg = config.load(path, gathered)
    lines = [str(e) for e in gathered]
    assert lines[0] == str(first.value)
    assert [line.split(": ")[1] for line in lines] == [
        "functions.missing.target",
        "functions.negative.workers",
        "functions.notexec.command",
    ]
    assert "no module named 'workers.nothere'" in lines[0]
    assert "is not executable; chmod +x it" in lines[2]
    assert all(line.startswith(f"{path}: ") and "\n" not in line for line in lines)
    assert list(cfg.functions) == ["good"]


def test_an_error_outside_the_pools_still_raises(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    text = BAD_POOLS.format(tmp=tmp_path).replace('store = "none"', "store = 5")
    path.write_text(textwrap.dedent(text))
    gathered: list[ConfigError] = []
    with pytest.raises(ConfigError, match="server.store"):
        config.load(path, gathered)
    assert gathered == []  # [server] is read before the pools
