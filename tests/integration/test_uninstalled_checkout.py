"""``cd checkout && python -m farm up`` runs a farm that is not installed.

The job server and the Python workers start with ``python -P`` (nothing from the working
directory, tests/security/test_planted_module.py), so they found ``farm`` only where it
is installed: from a checkout that is not, the server could not import it, and where an
older farm is installed they ran that one beside the supervisor's. The supervisor puts the
directory its own ``farm`` came from on their PYTHONPATH, unless it is a site-packages one
(and only when others may not write there: farm.targets.trusted_pythonpath)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, farm_cli

POOL = """
[functions.where]
target = "where:where"
workers = 1
"""


@pytest.mark.timeout(90)
def test_the_children_of_a_farm_run_from_a_checkout_import_its_farm(tmp_path: Path) -> None:
    checkout = tmp_path / "co"  # a copy: no install, nor this test run's PYTHONPATH, names it
    shutil.copytree(ROOT / "farm", checkout / "farm", ignore=shutil.ignore_patterns("*.pyc"))
    (checkout / "where.py").write_text(
        "import farm\n\ndef where(job):\n    return farm.__file__.encode()\n"
    )
    up = FarmUp(checkout, POOL, start=False)  # started in checkout: `python -c` imports from it
    del up.env["PYTHONPATH"]
    up.start()
    try:
        up.expect_notify("READY=1")  # the server imported farm
        up.wait_idle({"where": 1})
        done = farm_cli("submit", "where", "", "--server", up.addr)
    finally:
        up.stop()
    assert done.returncode == 0, done.stderr
    # An installed farm (the editable install of a CI run, an older release) answered before.
    assert done.stdout.strip() == str(checkout / "farm" / "__init__.py"), done.stdout
