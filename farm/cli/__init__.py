"""The `farm` command line: thin typed commands over library code.

Each group of commands lives in its own module and registers on ``app``.
Errors become one clear line and exit code 2 (usage, config) or 1 (failed
job or command), never a traceback.
"""

from __future__ import annotations

import signal
import sys

# `farm up`: a SIGHUP before the supervisor's handlers are in (the imports below, the
# config: its first half second) ended it, Python's default, where an operator's or a
# config tool's `kill -HUP` came early. Held (blocked) from here, and let in as a reload
# once they are (Supervisor.install_signals). "up" is always argv[1]: the one option before
# a command, --version, exits. SIGTERM and SIGINT stay as they are: they end it.
if sys.argv[1:2] == ["up"]:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

# Each import registers its commands; their order is `farm --help`'s: running the farm first.
from farm.cli import supervise  # noqa: F401

# isort: split
from farm.cli import admin, check, deploy, jobs, server, top  # noqa: F401
from farm.cli.app import app, main

__all__ = ["app", "main"]
