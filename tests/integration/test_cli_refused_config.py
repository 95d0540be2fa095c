"""A config file `farm up` would refuse, where no farm runs: every command that asks the
farm says the file's line, exit 2. `farm ps`, `top`, `stop`, `scale` read only the control
socket's address from it and said "no supervisor answers at ... (is farm up running with
this config?)", exit 1, while `farm status` named the key, or (a pool's key) said the
server was down. A farm that runs is still reached through a file broken since it started
(test_supervisor_cli: the reload of a broken file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.clirun import cli, one_line_error
from tests.helpers.servers import free_port

COMMANDS = [["ps"], ["top", "--once"], ["stop"], ["scale", "x=1"], ["status"], ["jobs"]]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_file_farm_up_refuses_is_named_by_every_command(
    command: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "farm.toml"
    # Its own addresses, where nothing listens: not the default ones another farm may hold.
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\n'
        f'[supervisor]\ncontrol = "{tmp_path}/control.sock"\nmetrics = "off"\n'
        '[functions.x]\ntarget = "workers.text:reverse"\nworkers = -1\n'
    )
    out = cli(*command, "-c", str(config), timeout=60)
    assert out.returncode == 2, (out.returncode, out.stderr)
    said = one_line_error(out.stderr)
    assert said.startswith(f"farm: {config}: functions.x.workers: must be"), said
    assert said.endswith("(farm up refuses this file, so no farm runs from it)"), said
