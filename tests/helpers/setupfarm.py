"""The `farm up` that farm.Executor's setup tests share (test_executor_setup.py,
test_executor_scripts.py): a handle giving executors and running scripts, and its
module-scoped fixture, which a test module takes as `shared = setupfarm.shared`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, executor_farm


class Farm:
    def __init__(self, up: FarmUp, key: Path) -> None:
        self.up = up
        self.key = key

    def executor(self, *args: Any, **options: Any) -> farm.Executor:
        return farm.Executor(
            *args, servers=[f"unix:{self.up.unix}"], key_file=str(self.key), **options
        )

    def run_script(self, body: str) -> subprocess.CompletedProcess[str]:
        """``body`` run as a script (its own ``__main__``), with an executor ``ex(...)``."""
        head = f"""
            import farm
            def ex(*args, **options):
                return farm.Executor(
                    *args, servers=["unix:{self.up.unix}"], key_file={str(self.key)!r}, **options
                )
        """
        script = textwrap.dedent(head) + textwrap.dedent(body)
        return subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with executor_farm(tmp_path_factory.mktemp("setup")) as (up, key):
        yield Farm(up, key)
