"""What the spill tests share: a spill setting in a test's directory, a pid no process has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from farm.executor import spill

__all__ = ["dead_pid", "settings"]


def settings(tmp_path: Path, mb: int = 16) -> spill.SpillSettings:
    return spill.SpillSettings(tmp_path / "spill", mb << 20)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(child.stdout)
