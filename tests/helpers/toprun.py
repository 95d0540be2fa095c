"""`farm top` against a `FarmUp` (``farm_top``) and its frame read as tables (``rows_of``):
what tests/monitoring/test_top.py and test_top_sources.py share."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp

POOLS = """
[functions.alpha]
target = "tests.helpers.monitored:work"
workers = 2

[functions.beta]
target = "tests.helpers.monitored:work"
workers = 1
"""

ENV = dict(os.environ, COLUMNS="160", LINES="60", PYTHONPATH=str(ROOT))
#: The function table's FAILED cell, before REFUSED and DROPPED.
FAILED = -3


def farm_top(up: FarmUp, *args: str, env: dict[str, str] = ENV) -> list[str]:
    argv = [sys.executable, "-m", "farm.cli", "top", "--control", up.control, *args]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    return run.stdout.splitlines()


def rows_of(lines: list[str], first: str) -> dict[str, list[str]]:
    """The table under the header line that starts with ``first``, keyed by the first cell."""
    start = next(
        i for i, line in enumerate(lines) if line.replace("▼", "").strip().startswith(first)
    )
    out: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        out.setdefault(cells[0], cells)
    return out
