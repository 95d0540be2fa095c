"""Runs the atheris fuzzers for a bounded number of inputs (it installs from PyPI here): the
decoder's, and the server's connections' (admin lines and packets interleaved)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def _nothing() -> None:
    """Run in the child before exec: only there so that subprocess forks (see below)."""


# A connection's input runs the server's handlers for up to 40 steps: some 200 a second.
@pytest.mark.parametrize(("fuzzer", "runs"), [("fuzz_decoder", 30000), ("fuzz_connections", 3000)])
def test_atheris_finds_nothing(tmp_path, fuzzer: str, runs: int) -> None:
    pytest.importorskip("atheris", reason="atheris has no wheel for this platform")
    run = subprocess.run(
        [sys.executable, str(ROOT / f"tests/fuzz/{fuzzer}.py"), f"-runs={runs}", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this tree's farm, installed or not
        capture_output=True,
        text=True,
        timeout=240,
        # A preexec_fn makes subprocess fork, not vfork. A vforked child's exec keeps this
        # process's peak RSS as its own (Linux keeps the old mm's high-water mark in
        # ru_maxrss), and libFuzzer's 2 GB limit reads ru_maxrss: after an xdist worker's
        # earlier tests peaked at 2.4 GB, the fuzzer was called out of memory at its start
        # (CI). A forked child starts from this process's current RSS.
        preexec_fn=_nothing,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Done {runs} runs" in run.stderr
