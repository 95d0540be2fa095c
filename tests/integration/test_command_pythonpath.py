"""A command pool of the supervisor's own user gets the supervisor's PYTHONPATH as it is.

Only the job server and the Python workers start with ``python -P`` and get a PYTHONPATH
that names no working directory (farm.targets.trusted_pythonpath). A command pool (PHP,
`farm worker`, a script) often runs in its own ``cwd``, where ``PYTHONPATH=lib`` is what
its operator meant: it lost that entry, and got this farm's checkout appended."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

POOL = """
[functions.pathdump]
command = ["/bin/sh", "-c", "echo \\"PYTHONPATH=$PYTHONPATH\\"; echo END-OF-ENV; exec sleep 600"]
workers = 1
"""


@pytest.mark.timeout(60)
def test_a_command_pool_of_this_user_keeps_the_supervisor_s_pythonpath(tmp_path: Path) -> None:
    pythonpath = f"lib:{ROOT}"  # ROOT: where the supervisor's server and workers find farm
    up = FarmUp(tmp_path, POOL, extra_env={"PYTHONPATH": pythonpath})
    try:
        log = wait_for("the command's PYTHONPATH", lambda: _ended(up.read_log()), 30)
    finally:
        up.stop()
    said = [line.partition("): ")[2] for line in log.splitlines() if "PYTHONPATH=" in line]
    assert said == [f"PYTHONPATH={pythonpath}"], log
    # The server and the Python workers still have it dropped, as the warning says.
    assert "PYTHONPATH entries ['lib'] dropped for the server and workers" in log, log


def _ended(log: str) -> str | None:
    return log if "END-OF-ENV" in log else None
