"""A steering command whose config names a control socket another farm answers on: two
configs that differ only in their ports share the default control socket, and `farm stop
-c d/farm.toml` stopped the farm started from c/farm.toml. Each command that goes through
the control socket is refused, exit 2, and the farm it reached is left as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.clirun import one_line_error
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import free_ports

pytestmark = pytest.mark.timeout(60)

POOL = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'

#: Every command that asks the control socket, as an operator of farm d would type it.
STEERING = (
    ["ps"],
    ["ps", "--json"],
    ["ps", "--watch"],
    ["scale", "reverse=2"],
    ["restart"],
    ["reload"],
    ["top", "--once"],
    ["stop", "--wait", "0"],
    ["stop"],
)


def other_config(up: FarmUp, folder: Path) -> Path:
    """A second farm's config: ``up``'s with other ports and Unix socket, and so the same
    control socket (as two configs that leave [supervisor] control out share the default)."""
    folder.mkdir()
    port, metrics = free_ports(2)
    text = up.config.read_text().replace(str(up.unix), str(folder / "gearman.sock"))
    text = text.replace(f':{up.port}"', f':{port}"').replace(f':{up.metrics_port}"', f':{metrics}"')
    assert text != up.config.read_text() and f'control = "{up.control}"' in text
    path = folder / "farm.toml"
    path.write_text(text)
    return path


def farm_with_env(
    *args: str, cwd: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """The `farm` CLI with more environment (a blank $FARM_CONFIG is unset), from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-c", "from farm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **env},
    )


def test_a_command_naming_another_farm_s_config_is_refused_and_the_farm_left_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "c").mkdir()
    up = FarmUp(tmp_path / "c", POOL)
    try:
        up.expect_notify("READY=1")
        before = {r["pid"] for r in up.wait_idle({"reverse": 1})}
        other = other_config(up, tmp_path / "d")
        for args in STEERING:
            out = farm_cli(*args, "-c", str(other))
            assert out.returncode == 2, (args, out.stdout, out.stderr)
            line = one_line_error(out.stderr)
            assert str(up.config) in line and str(other) in line, (args, line)
            assert "[supervisor] control" in line, (args, line)  # how to run both
            # The supervisor's own words: --help would not fix it (`farm top` and `farm
            # stop` ended it with "(usage: farm top --help)").
            assert "(usage:" not in line, (args, line)
        # $FARM_CONFIG names a config as -c does; -c outranks it.
        out = farm_with_env("stop", FARM_CONFIG=str(other))
        assert out.returncode == 2 and str(other) in one_line_error(out.stderr)
        # The refusal says that $FARM_CONFIG named it, and how to set it (it spoke of -c alone).
        for args in (["stop"], ["stop", "--control", up.control], ["ps"], ["top", "--once"]):
            out = farm_with_env(*args, FARM_CONFIG=str(other))
            line = one_line_error(out.stderr)
            assert out.returncode == 2 and "(named by $FARM_CONFIG" in line, (args, line)
            assert f"to steer it, FARM_CONFIG={up.config} (or -c {up.config})" in line, line
        out = farm_with_env("ps", "-c", str(up.config), FARM_CONFIG=str(other))
        assert out.returncode == 0, out.stderr
        # No config named at all: the control socket the search finds (./farm.toml) is
        # asked, as before.
        out = farm_with_env("ps", FARM_CONFIG="", cwd=str(up.tmp))
        assert out.returncode == 0 and "reverse" in out.stdout, out.stderr
        # The farm's own file by another name (a symbolic link, a hard link) is its own.
        (tmp_path / "link.toml").symlink_to(up.config)
        os.link(up.config, tmp_path / "hard.toml")
        for name in ("link.toml", "hard.toml"):
            out = farm_cli("ps", "-c", str(tmp_path / name))
            assert out.returncode == 0 and "reverse" in out.stdout, (name, out.stderr)
        # Nothing happened to it: not stopped, scaled, restarted or reloaded.
        assert up.alive()
        rows = up.ask({"cmd": "ps"})
        assert rows["targets"] == {"reverse": 1}
        assert {r["pid"] for r in rows["processes"] if r["slot"] is not None} == before
        assert "reloaded" not in up.read_log()
    finally:
        assert up.stop() == 0


def test_the_config_check_holds_once_the_farm_s_directory_is_removed(tmp_path: Path) -> None:
    # `farm up -c farm.toml` in a directory since removed (a deploy's old release): the
    # farm's file was still named "farm.toml", and the check of a request's config read it
    # against a working directory no longer there: FileNotFoundError in the supervisor, a
    # traceback in its log, and "the supervisor closed early" for the request.
    c = tmp_path / "c"
    c.mkdir()
    up = FarmUp(c, POOL, start=False)
    up.control = str(tmp_path / "control.sock")  # outside c: asked after c is gone
    up.write_config(POOL)
    up.config_arg = "farm.toml"  # relative, in c
    up.start()
    with open(up.log_path, "rb") as log:  # read on after c is gone
        try:
            up.expect_notify("READY=1")
            up.wait_idle({"reverse": 1})
            other = tmp_path / "other.toml"
            other.write_text("")
            started = up.config  # c/farm.toml, whole
            shutil.rmtree(c)
            out = farm_cli("ps", "--control", up.control, "-c", str(other))
            assert out.returncode == 2, (out.returncode, out.stderr)
            line = one_line_error(out.stderr)
            assert f"runs {started}, not {other}" in line, line
            out = farm_with_env("ps", "--control", up.control, FARM_CONFIG="")
            assert out.returncode == 0 and "reverse" in out.stdout, out.stderr
        finally:
            assert up.stop() == 0
        assert "Traceback" not in log.read().decode(errors="replace")
