"""The README's two commands on a fresh machine: where python3 refuses `pip install`
outside a virtualenv (PEP 668, Debian's and Ubuntu's own), make builds ./.venv and
installs there; elsewhere it installs into the python3 it is given. Read with `make -n`,
which prints the recipes and runs nothing but the Makefile's own probe."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def fake_python(tmp_path: Path, managed: bool) -> Path:
    """A python3 whose only answer is the Makefile's probe: externally managed or not."""
    exe = tmp_path / "python3"
    exe.write_text(f"#!/bin/sh\necho {int(managed)}\n")
    exe.chmod(0o755)
    return exe


def dry_run(target: str, python: Path) -> str:
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"SYSTEM_PYTHON={python}"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},  # no virtualenv active, no PYTHON from outside
    )
    return done.stdout


@pytest.mark.parametrize("target", ["run", "test"])
def test_an_externally_managed_python_gets_a_virtualenv(tmp_path: Path, target: str) -> None:
    python = fake_python(tmp_path, managed=True)
    recipes = dry_run(target, python)
    if (ROOT / ".venv" / "bin" / "python").exists():
        assert f"{python} -m venv .venv" not in recipes  # made once, then kept
    else:
        assert f"{python} -m venv .venv" in recipes
    assert ".venv/bin/python -m pip install -q -e " in recipes
    assert f"{python} -m pip" not in recipes


@pytest.mark.parametrize("target", ["run", "test"])
def test_any_other_python_is_installed_into(tmp_path: Path, target: str) -> None:
    python = fake_python(tmp_path, managed=False)
    recipes = dry_run(target, python)
    assert "-m venv" not in recipes
    assert f"{python} -m pip install -q -e " in recipes


@pytest.mark.parametrize("failing", ["", "not serial", "serial"])
def test_make_test_runs_both_passes_and_fails_where_either_does(
    tmp_path: Path, failing: str
) -> None:
    # `make test` runs the parallel pass, then the serial one: the second runs whatever the
    # first gave, and a failure of either is make's. Run for real, with deps-test left out
    # (-o) and a python that notes its arguments and fails the pass named by ``failing``.
    log = tmp_path / "passes"
    python = tmp_path / "python"
    fails = f'case "$*" in *"-m {failing}") exit 1;; esac\n' if failing else ""
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{fails}exit 0\n')
    python.chmod(0o755)
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "-o", "deps-test", "test", f"PYTHON={python}",
         f"SYSTEM_PYTHON={fake_python(tmp_path, managed=False)}"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    passes = log.read_text().splitlines()
    assert len(passes) == 2, passes
    assert passes[0].startswith("-m pytest -q -n ") and passes[0].endswith("-m not serial")
    assert passes[1] == "-m pytest -q -m serial"
    assert (done.returncode != 0) == bool(failing), done.stderr
