"""Modules another user put in the directory ``farm up`` was started in are not imported.

The job server and each Python worker ran as ``python -m ...``, which puts the working
directory first on ``sys.path``: started in a directory every user may write (``/tmp``,
a shared scratch directory), the farm imported ``farm`` itself, the pools' targets and
anything they import from there, so another user ran code as the farm's user (root,
here) by leaving a ``farm/`` or ``workers/`` folder in it. That directory is searched
now only when it is this user's (or root's) and others may not write to it, as
``./farm.toml`` is read (farm.discovery)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp

NOBODY = 65534

POOL = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""


def plant(shared: Path, package: str, marker: Path) -> None:
    """A package of nobody's that notes who imported it, then passes for the real one
    (its modules are the checkout's), so the farm runs on and the note is all it shows."""
    folder = shared / package
    folder.mkdir()
    real = ROOT / package
    (folder / "__init__.py").write_text(
        "import os\n"
        f"with open({str(marker)!r}, 'a') as f:\n"
        f"    f.write(f'{package} {{os.getpid()}} uid {{os.getuid()}}\\n')\n"
        f"__path__ = [{str(real)!r}]\n"
        f"exec(compile(open({str(real / '__init__.py')!r}).read(), __file__, 'exec'))\n"
    )
    for path in (folder, folder / "__init__.py"):
        os.chown(path, NOBODY, NOBODY)


@pytest.mark.timeout(90)
def run_once(up: FarmUp, marker: Path) -> tuple[list[str], str]:
    """Run ``up`` until its reverse worker waits (its target imported: the server and the
    worker ran), then stop it: the planted modules' import lines, one per importer ("NAME
    PID uid UID"), and its log."""
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        log = up.read_log()
    finally:
        up.stop()
    return (marker.read_text() if marker.exists() else "").splitlines(), log


def test_modules_planted_in_the_working_directory_others_may_write_are_not_imported(
    tmp_path: Path,
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to make files of a second local user (CI runs as root)")
    shared = tmp_path / "shared"  # as /tmp: every user may write, sticky
    shared.mkdir()
    os.chmod(shared, 0o1777)
    marker = tmp_path / "imported"
    plant(shared, "farm", marker)
    plant(shared, "workers", marker)
    (tmp_path / "farm").mkdir()
    up = FarmUp(tmp_path / "farm", POOL, cwd=shared)
    ran, _ = run_once(up, marker)  # the supervisor's lines too
    assert not ran, f"the farm imported another user's modules from its directory: {ran}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("entry", ["", "."])
def test_an_empty_or_relative_pythonpath_entry_does_not_bring_the_directory_back(
    tmp_path: Path, entry: str
) -> None:
    # `export PYTHONPATH=$PYTHONPATH:/srv/app` with it unset gives ":/srv/app": Python reads
    # the empty entry (as it does ".") against the working directory, past -P.
    if os.getuid() != 0:
        pytest.skip("needs root to make files of a second local user (CI runs as root)")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    marker = tmp_path / "imported"
    plant(shared, "farm", marker)
    plant(shared, "workers", marker)
    (tmp_path / "farm").mkdir()
    pythonpath = f"{entry}:{tmp_path / 'farm'}:{ROOT}"
    up = FarmUp(tmp_path / "farm", POOL, cwd=shared, extra_env={"PYTHONPATH": pythonpath})
    # `farm up` itself was started with that PYTHONPATH by its operator: its children are not.
    ran, log = run_once(up, marker)
    children = [line for line in ran if f" {up.proc.pid} " not in line]
    assert not children, f"the farm's children imported another user's modules: {children}"
    assert f"PYTHONPATH entries {[entry]} dropped" in log, log


@pytest.mark.timeout(60)
def test_farm_worker_does_not_import_from_a_working_directory_others_may_write(
    tmp_path: Path,
) -> None:
    # A command pool may run `farm worker` in the supervisor's working directory: it looks
    # there by the workers' rule (search_working_directory), not always as `python -m` does.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    marker = tmp_path / "imported"
    (shared / "planted.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise RuntimeError('planted')\n"
    )
    done = subprocess.run(
        # -P: as the installed `farm` script, which does not put its working directory first
        [sys.executable, "-P", "-c", "from farm.cli import main; main()", "worker"]
        + ["planted:job", "--server", "127.0.0.1:1"],
        cwd=shared,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert not marker.exists(), "farm worker imported a module from a directory anyone may write"
    assert done.returncode == 2 and "No module named 'planted'" in done.stderr, done.stderr


@pytest.mark.timeout(90)
def test_a_checkout_its_group_may_write_is_not_on_a_root_farm_s_pythonpath(tmp_path: Path) -> None:
    # `cd checkout && python -m farm up` as root, in a checkout its group may write: the
    # checkout went on the children's PYTHONPATH, ahead of the stdlib, and a group member's
    # json/ there ran in root's server and workers.
    if os.getuid() != 0:
        pytest.skip("needs root to make files of a second local user (CI runs as root)")
    checkout = tmp_path / "co"
    shutil.copytree(ROOT / "farm", checkout / "farm", ignore=shutil.ignore_patterns("*.pyc"))
    os.chown(checkout, 0, NOBODY)
    os.chmod(checkout, 0o775)
    marker = tmp_path / "imported"
    planted = checkout / "json"  # a member of the group's: passes for the stdlib's json
    planted.mkdir()
    real = Path(json.__file__).parent
    (planted / "__init__.py").write_text(
        "import os\n"
        f"with open({str(marker)!r}, 'a') as f:\n"
        "    f.write(f'json {os.getpid()} uid {os.getuid()}\\n')\n"
        f"__path__ = [{str(real)!r}]\n"
        f"exec(compile(open({str(real / '__init__.py')!r}).read(), __file__, 'exec'))\n"
    )
    for path in (planted, planted / "__init__.py"):
        os.chown(path, NOBODY, NOBODY)
    # Started in the checkout (no -P): the supervisor's farm is the checkout's; the children
    # find one through the absolute entry, which is the operator's to give.
    up = FarmUp(checkout, POOL, start=False, extra_env={"PYTHONPATH": str(ROOT)})
    up.start()
    ran, log = run_once(up, marker)
    children = [line for line in ran if f" {up.proc.pid} " not in line]
    assert not children, f"the farm's children imported a group member's json: {children}"
    assert f"{checkout} (where this farm was imported from) is not on" in log, log


def _searched_from(cwd: Path) -> str:
    """What a worker started in ``cwd`` puts first on sys.path (search_working_directory)."""
    code = "from farm.targets import search_working_directory; print(search_working_directory())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_working_directory_under_one_every_user_may_swap_is_not_searched(
    tmp_path: Path,
) -> None:
    # Closed itself, but in a directory anyone may write (not sticky): a worker's sys.path
    # holds its path, not the directory, and any import made after the check (a module a
    # job's pickle names, a worker booting after a restart) looked in whatever directory
    # was put at that path meanwhile.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "proj").mkdir(mode=0o755)
    assert _searched_from(shared / "proj") == "None"
    assert _searched_from(tmp_path) == str(tmp_path)  # a directory of ours is searched


def test_a_working_directory_in_another_users_directory_is_not_searched(tmp_path: Path) -> None:
    # Root's checkout in a user's home (`sudo git clone`, then `sudo farm up` there): that
    # user may rename it and put a directory of theirs at its path, which the workers
    # searched first for every module imported from then on, as root.
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory of another user (CI runs as root)")
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chown(home, NOBODY, NOBODY)
    tmp_path.chmod(0o755)
    (home / "proj").mkdir(mode=0o755)  # root's
    assert _searched_from(home / "proj") == "None"
