"""The `farm` command run as a user runs it (its own process, from the checkout), and its
one-line errors."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.helpers import ROOT

__all__ = ["cli", "one_line_error"]


def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    code = "from farm.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, **kw
    )


def one_line_error(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]
