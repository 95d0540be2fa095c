"""A project's own packages beside installed ones of their names: `farm up` passes the
targets its workers will import, and they really serve them."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm import Client
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
