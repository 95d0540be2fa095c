"""Runs the atheris decoder fuzzer for a bounded number of inputs (it installs from PyPI here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_atheris_finds_nothing_in_the_decoder(tmp_path) -> None:
    pytest.importorskip("atheris", reason="atheris has no wheel for this platform")
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests/fuzz/fuzz_decoder.py"), "-runs=30000", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this tree's farm, installed or not
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 30000 runs" in run.stderr
