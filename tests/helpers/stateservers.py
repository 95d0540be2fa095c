"""`farm server` run as its command runs it, with a state directory of the test's own: the
default stores (queue-PORT.db) it keeps there, for the tests of which store a server takes
and which it names as holding jobs no server runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def state_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a server whose state directory is under ``tmp_path``."""
    return dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), PYTHONPATH=str(ROOT))


def server(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``farm server ARGS`` started in the repository, its output kept for the test."""
    argv = [sys.executable, "-c", "from farm.cli import main; main()", "server", *args]
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
