"""The `farm` command line: thin typed commands over library code.

Each group of commands lives in its own module and registers on ``app``.
Errors become one clear line and exit code 2 (usage, config) or 1 (failed
job or command), never a traceback.
"""

from __future__ import annotations

from farm.cli import deploy, jobs, server, supervise, top  # noqa: F401  (registers commands)
from farm.cli.app import app, main

__all__ = ["app", "main"]
