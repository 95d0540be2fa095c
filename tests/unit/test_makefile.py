"""The README's two commands on a fresh machine: where python3 refuses `pip install`
outside a virtualenv (PEP 668, Debian's and Ubuntu's own), make builds ./.venv and
installs there; elsewhere it installs into the python3 it is given. Read with `make -n`,
which prints the recipes and runs nothing but the Makefile's own probe. The targets for
working on farm, `make unit` and `make lint`, install what they run as well (deps-dev)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


@pytest.mark.parametrize("target", ["unit", "libs", "lint"])
@pytest.mark.parametrize("managed", [True, False])
def test_the_working_targets_install_what_they_run_first(
    tmp_path: Path, target: str, managed: bool
) -> None:
    # `make unit` and `make lint` ran pytest, ruff and mypy without installing them: on
    # Debian's python3, `.venv/bin/python: No such file or directory`, then after `make
    # install`, `No module named pytest`. They install the `test` extra first, by pip alone.
    python = fake_python(tmp_path, managed=managed)
    recipes = dry_run(target, python).splitlines()
    used = ".venv/bin/python" if managed else str(python)
    installs = [i for i, line in enumerate(recipes) if " -m pip install " in line]
    assert len(installs) == 1, recipes
    install = installs[0]
    assert recipes[install].endswith(f"|| {used} -m pip install -q -e '.[test]'")
    runs = [i for i, line in enumerate(recipes) if line.startswith(f"{used} -m ")]
    assert runs and all(i > install for i in runs), recipes
    assert not any("apt-get" in line for line in recipes if "venv" not in line), recipes


@pytest.mark.parametrize("met", [True, False])
def test_deps_dev_runs_pip_only_when_a_requirement_is_not_met(tmp_path: Path, met: bool) -> None:
    # Run for real with a python that notes its arguments: the check (``-c``) answers
    # whether pyproject.toml's requirements are met; pip runs only when they are not.
    log = tmp_path / "calls"
    python = tmp_path / "python"
    python.write_text(
        f'#!/bin/sh\ncase "$1" in\n-c) echo check >> {log}; exit {0 if met else 1};;\n'
        f'-m) echo "$2" >> {log};;\nesac\nexit 0\n'
    )
    python.chmod(0o755)
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "deps-dev", f"PYTHON={python}",
         f"SYSTEM_PYTHON={fake_python(tmp_path, managed=False)}"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == (["check"] if met else ["check", "pip"])


def test_the_requirements_check_reads_pyproject_toml(tmp_path: Path) -> None:
    # The check itself, with this python: it answers 0 where the test extra is installed
    # (the suite runs), 1 for a requirement nothing satisfies.
    text = subprocess.run(
        ["make", "-s", "-p", "-n", "-C", str(ROOT), "deps-dev", "PYTHON=true"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    code = next(line for line in text.splitlines() if line.startswith("DEV_DEPS_MET := "))
    code = code.removeprefix("DEV_DEPS_MET := ")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["pytest>=999"]\n[project.optional-dependencies]\ntest = []\n'
    )
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True).returncode
        == 1
    )


def python_without(tmp_path: Path, *modules: str) -> Path:
    """This python, but with ``modules`` not there (a uv-made virtualenv has no pip): a
    sitecustomize marks each as missing, as find_spec and import then say."""
    site = tmp_path / "site"
    site.mkdir()
    gone = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    (site / "sitecustomize.py").write_text(f"import sys\n{gone}")
    exe = tmp_path / "python-without"
    exe.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    exe.chmod(0o755)
    return exe


def deps_dev(tmp_path: Path, python: Path, folder: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(folder), "deps-dev",
         f"PYTHON={python}", f"SYSTEM_PYTHON={fake_python(tmp_path, managed=False)}"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.parametrize("missing", [("pip",), ("pip", "packaging")])
def test_deps_dev_needs_no_pip_where_all_is_installed(
    tmp_path: Path, missing: tuple[str, ...]
) -> None:
    # The check read the requirements with pip's own packaging: with no pip, it failed, pip
    # was run, and `make unit` ended "No module named pip", exit 2, all it needed there.
    # Without either packaging, a requirement installed at all is met.
    done = deps_dev(tmp_path, python_without(tmp_path, *missing))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_deps_dev_with_something_missing_and_no_pip_says_so_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[project]\ndependencies = ["psutil", "no-such-farm-dep>=1"]\n'
        "[project.optional-dependencies]\ntest = []\n"
    )
    done = deps_dev(tmp_path, python_without(tmp_path, "pip"), folder)
    assert done.returncode != 0
    assert done.stdout.splitlines() == [
        f"make: no-such-farm-dep>=1 is not installed, and {sys.executable} has no pip to"
        " install it: install the test extra with another installer, e.g."
        ' uv pip install -e ".[test]"'
    ], done.stdout
    assert "No module named pip" not in done.stderr, done.stderr
