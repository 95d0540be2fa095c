"""The tables a reload leaves to a restart: one list (farm.config.RESTART_TABLES), which the
reload keeps them by and `farm check` and the reload's refusals name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from farm.cli.check import check
from farm.config import RESTART_TABLES, RESTART_TABLES_SAID, Config, load
from farm.config.rules import on_running_farm
from farm.errors import ConfigError


def test_every_table_but_the_pools_takes_a_restart() -> None:
    # [executor] was left out of what `farm check` said, while a reload refused it too.
    tables = {f.name for f in dataclasses.fields(Config)} - {"source", "functions"}
    assert set(RESTART_TABLES) == tables
    assert RESTART_TABLES_SAID == "[server], [supervisor] and [executor]"
    assert RESTART_TABLES_SAID in " ".join((check.__doc__ or "").split())


def test_a_reload_refused_by_the_running_tables_names_them_all(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    pool = '[functions.f]\ntarget = "tests.helpers.serving:reverse"\nworkers = {}\n'
    path.write_text("[supervisor]\nmemory_budget_mb = 300\n" + pool.format(1))
    running = load(path)
    path.write_text("[supervisor]\nmemory_budget_mb = 1000\n" + pool.format(5))
    with pytest.raises(ConfigError) as refused:
        on_running_farm(load(path), running, "systemctl restart farm")
    said = str(refused.value)
    assert f"{RESTART_TABLES_SAID} changes take a restart, systemctl restart farm)" in said
