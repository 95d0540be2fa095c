"""A project's own packages beside installed ones of their names: `farm up` passes the
targets its workers will import, and they really serve them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm import Client
from tests.helpers import ROOT
from tests.helpers.clirun import one_line_error
from tests.helpers.editable import installed_at_start
from tests.helpers.farmproc import FarmUp

POOL = """
[functions.shout]
target = "mapped.jobs:shout"
workers = 1
"""


@pytest.mark.timeout(90)
def test_a_module_an_editable_install_finds_past_a_plain_package_is_served(
    tmp_path: Path,
) -> None:
    # farm installed with `pip install -e`, `farm up` in a project with a plain workers/
    # of its own: setuptools' finder still imports farm's workers/text.py in the workers,
    # but the config check refused the built-in pools as hidden, and farm up did not start.
    run, src = tmp_path / "project", tmp_path / "src"
    for where in (run, src):
        (where / "mapped").mkdir(parents=True)
        (where / "mapped" / "__init__.py").write_text("")
    (src / "mapped" / "jobs.py").write_text("def shout(job):\n    return job.data.upper()\n")
    installed_at_start(tmp_path, {"mapped": str(src / "mapped")})  # tmp_path: on PYTHONPATH
    up = FarmUp(tmp_path, POOL, cwd=run)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"shout": 1})
        with Client(up.addr) as client:
            assert client.call("shout", "abc", timeout=10) == b"ABC"
    finally:
        up.stop()


@pytest.mark.timeout(60)
def test_a_worker_s_target_hidden_by_a_package_of_the_working_directory_names_both(
    tmp_path: Path,
) -> None:
    # `farm worker workers.text:upper` (the README's) in a project with a workers/ package
    # of its own said only "No module named 'workers.text'", with farm's installed beside it.
    run, lib = tmp_path / "project", tmp_path / "lib"
    for where in (run, lib):
        (where / "shadowed").mkdir(parents=True)
        (where / "shadowed" / "__init__.py").write_text("")
    (lib / "shadowed" / "jobs.py").write_text("def job(j):\n    return b''\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(lib), str(ROOT)]))
    out = subprocess.run(
        [sys.executable, "-m", "farm", "worker", "shadowed.jobs:job", "--server", "127.0.0.1:1"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert one_line_error(out.stderr) == (
        "farm: cannot load shadowed.jobs:job: ModuleNotFoundError: No module named"
        f" 'shadowed.jobs' ('shadowed' is {run / 'shadowed'}, found first: it hides"
        f" {lib / 'shadowed'}, which has it; start farm in another directory)"
    )
