"""A farm.toml written for a test, and the one-line error loading one gives."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from farm import config
from farm.errors import ConfigError

GOOD = """
[server]
listen = ["127.0.0.1:4999", "unix:run/gearman.sock"]
store = "none"
job_retries = 5

[supervisor]
control = "/tmp/farm-test/control.sock"
cpus = "all"
servers = []

[functions.rev]
target = "workers.hashing:compress"
workers = 2

[functions.hash]
target = "workers.hashing:pbkdf2"
workers = "auto"
timeout = 30
max_jobs = 100
max_rss_mb = 256
"""


def write(tmp_path: Path, text: str, name: str = "farm.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    return message
