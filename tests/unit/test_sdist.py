"""The sdist carries what an operator installs from it: docs/operations.md ("Installing under
systemd") has them install the package from a path, then copy the unit, its config and the
pages the unit's Documentation= names from that same tree. An sdist of the packages alone
left step 3 failing: "install: cannot stat 'systemd/farm.toml'"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

#: A unit test run from the unpacked sdist (its own imports: farm's and the test helpers').
UNIT_TEST = "tests/unit/test_call_ids.py"

#: `install`'s options that take a value: the word after them is no file to copy.
VALUED = {"-m", "-o", "-g", "-t"}


def copied_by_the_install_steps() -> list[str]:
    """The files the page's `sudo install ...` lines copy, relative to the tree (globs too)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("```sh", text.index("## Installing under systemd"))
    block = text[start : text.index("```\n", start + 5)]
    sources: list[str] = []
    for line in block.splitlines():
        words = line.split("#")[0].split()
        if words[:2] != ["sudo", "install"]:
            continue
        named, into_dir, args = [], False, iter(words[2:])
        for word in args:
            if word in VALUED:
                into_dir |= word == "-t"
                next(args)
            elif not word.startswith("-"):
                named.append(word)
        sources += named if into_dir else named[:-1]
    return sources


def tree_copy(into: Path) -> Path:
    """The checkout as a fresh clone has it: no virtualenv, build or egg-info of this one."""

    def left_out(directory: str, names: list[str]) -> set[str]:
        return {
            name
            for name in names
            if name.startswith(".")
            or name in ("__pycache__", "build", "dist")
            or name.endswith((".egg-info", ".db", ".db-wal", ".db-shm", ".db-reserve"))
            or (Path(directory) / name / "pyvenv.cfg").exists()
        }

    return Path(shutil.copytree(ROOT, into, ignore=left_out))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist built from a fresh clone's tree, with the backend [build-system] names."""
    pytest.importorskip(
        "setuptools",
        minversion="77",  # as [build-system] requires: project.license is an SPDX expression
        reason="builds the sdist with setuptools' own backend, as pyproject.toml requires it",
    )
    tmp_path = tmp_path_factory.mktemp("sdist")
    tree = tree_copy(tmp_path / "tree")
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return tmp_path / "dist" / built.stdout.split()[-1]


def shipped_names(sdist: Path) -> set[str]:
    """The sdist's files, relative to its top directory."""
    with tarfile.open(sdist) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


@pytest.mark.timeout(120)
def test_the_sdist_holds_each_file_the_install_steps_copy(sdist: Path) -> None:
    copied = copied_by_the_install_steps()
    assert {"systemd/farm.toml", "systemd/farm.service", "docs/*.md"} <= set(copied)
    shipped = shipped_names(sdist)
    for pattern in copied:
        wanted = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))
        assert wanted, f"{pattern}: the page copies a file the checkout does not have"
        missing = [name for name in wanted if name not in shipped]
        assert not missing, f"the sdist lacks what the install steps copy: {missing}"


@pytest.mark.timeout(120)
def test_the_sdist_holds_the_suite_that_make_test_runs(sdist: Path, tmp_path: Path) -> None:
    # A distribution's packager builds from the sdist and tests what they built: the sdist
    # held the packages alone, and `make test` there found no Makefile and no tests.
    shipped = shipped_names(sdist)
    wanted = {
        str(path.relative_to(ROOT))
        for top in ("tests", "bench")
        for path in (ROOT / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith(".")
    }
    assert "tests/conftest.py" in wanted and "bench/bench_executor.py" in wanted
    assert not sorted(wanted - shipped), "the sdist lacks files of the suite"
    assert "Makefile" in shipped
    # And the suite runs from the unpacked tree, against that tree's farm.
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (top,) = tmp_path.iterdir()
    # One interpreter says where farm and the tests come from, then runs a unit test.
    code = (
        "import sys, pytest, farm, tests; print(farm.__file__, tests.__file__);"
        f" sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {UNIT_TEST!r}]))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=top,
        env={**os.environ, "PYTHONPATH": str(top)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert ran.returncode == 0 and " passed" in ran.stdout, ran.stdout + ran.stderr
    where = ran.stdout.splitlines()[0].split()
    assert all(path.startswith(f"{top}/") for path in where), where
