"""The `farm` command line: thin typed commands over library code.

Each group of commands lives in its own module and registers on ``app``.
Errors become one clear line and exit code 2 (usage, config) or 1 (failed
job or command), never a traceback.
"""

from __future__ import annotations

# Each import registers its commands; their order is `farm --help`'s: running the farm first.
from farm.cli import supervise  # noqa: F401

# isort: split
from farm.cli import deploy, jobs, server, top  # noqa: F401
from farm.cli.app import app, main

__all__ = ["app", "main"]
