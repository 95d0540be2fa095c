"""A control request naming a config the farm does not run (farm.pools.control.another_farm):
the line its refusal says, and the same file by another name let through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.config.defaults import DEFAULTS_SOURCE
from farm.pools.control import another_farm


def test_the_same_file_by_any_name_is_the_farm_s_own(tmp_path: Path) -> None:
    runs = tmp_path / "c" / "farm.toml"
    runs.parent.mkdir()
    runs.write_text("")
    (tmp_path / "link.toml").symlink_to(runs)
    os.link(runs, tmp_path / "hard.toml")
    for name in ("c/farm.toml", "c/../c/farm.toml", "link.toml", "hard.toml"):
        assert another_farm("stop", str(tmp_path / name), str(runs), 7) is None, name


def test_another_file_is_refused_naming_both_and_what_to_do(tmp_path: Path) -> None:
    runs, asked = tmp_path / "c.toml", tmp_path / "d.toml"
    runs.write_text("")
    asked.write_text("")
    stop = another_farm("stop", str(asked), str(runs), 7)
    assert stop == (
        f"this farm (pid 7) runs {runs}, not {asked} (nothing was stopped): to steer it,"
        f" -c {runs}; to run a farm from each, give each its own [supervisor] control"
        " (docs/operations.md, Several farms on one host)"
    )
    shown = another_farm("ps", str(asked), str(runs), 7)
    assert shown is not None and "nothing was" not in shown  # ps changes nothing anyway
    reload = another_farm("reload", str(asked), str(runs), 7)
    assert reload is not None and reload.startswith(f"this farm re-reads {runs}, not {asked}")
    assert "edit that file" in reload


def test_a_farm_started_from_no_file_is_steered_with_none_named(tmp_path: Path) -> None:
    asked = tmp_path / "d.toml"
    asked.write_text("")
    scale = another_farm("scale", str(asked), DEFAULTS_SOURCE, 7)
    assert scale is not None and f"runs {DEFAULTS_SOURCE}, not {asked}" in scale
    assert "to steer it, name no config" in scale
    reload = another_farm("reload", str(asked), DEFAULTS_SOURCE, 7)
    assert reload is not None and "it was started from no file" in reload


def test_a_working_directory_removed_raises_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The supervisor's directory removed: realpath of the built-in defaults' name (not a
    # path) read it against the working directory, and raised FileNotFoundError.
    asked = tmp_path / "d.toml"
    asked.write_text("")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    stop = another_farm("stop", str(asked), DEFAULTS_SOURCE, 7)
    assert stop is not None and f"runs {DEFAULTS_SOURCE}, not {asked}" in stop


def test_a_config_named_by_farm_config_is_said_so_and_the_fix_is_to_it(tmp_path: Path) -> None:
    # The refusal spoke of -c alone, and for a farm on the built-in defaults said "name no
    # config" to a user who had named none on the command line: $FARM_CONFIG had.
    runs, asked = tmp_path / "c.toml", tmp_path / "d.toml"
    runs.write_text("")
    asked.write_text("")
    stop = another_farm("stop", str(asked), str(runs), 7, "$FARM_CONFIG")
    assert stop is not None
    assert stop.startswith(
        f"this farm (pid 7) runs {runs}, not {asked} (named by $FARM_CONFIG; nothing was"
        f" stopped): to steer it, FARM_CONFIG={runs} (or -c {runs});"
    ), stop
    scale = another_farm("scale", str(asked), DEFAULTS_SOURCE, 7, "$FARM_CONFIG")
    assert scale is not None and "to steer it, unset FARM_CONFIG;" in scale, scale
    assert "name no config" not in scale
    reload = another_farm("reload", str(asked), str(runs), 7, "$FARM_CONFIG")
    assert reload is not None and "(named by $FARM_CONFIG;" in reload, reload
