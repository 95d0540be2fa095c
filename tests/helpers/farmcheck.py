"""`farm check` (and `farm up`) run as an operator runs them: a config in a directory of
its own, `python -m farm ...` in a process of its own, farm from PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.servers import free_port

__all__ = ["config", "farm", "lines"]


def config(tmp: Path, pools: str, store: str = "none") -> Path:
    path = tmp / "farm.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:{free_port()}", "unix:{tmp}/gearman.sock"]\n'
        f'store = "{store}"\n[supervisor]\ncontrol = "{tmp}/control.sock"\nmetrics = "off"\n'
        + pools
    )
    return path


def farm(
    tmp: Path, *args: str, wrap: list[str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m farm ARGS` started in ``tmp`` (whose modules the workers find there, as
    they would in `farm up`'s working directory), farm itself from PYTHONPATH."""
    argv = [sys.executable, "-m", "farm", *args]
    return subprocess.run(
        (wrap or (lambda a: a))(argv),
        cwd=tmp,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(text: str) -> list[str]:
    assert "Traceback" not in text, text
    return text.strip().splitlines()


def serve_store(store: Path) -> subprocess.CompletedProcess[str]:
    """`farm server` started on ``store`` on a free port, for a store it refuses: its end
    (exit code, what it said), within 30 s."""
    return subprocess.run(
        [sys.executable, "-m", "farm", "server", "-L", f"127.0.0.1:{free_port()}"]
        + ["--store", str(store)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=30,
    )
