"""A function from a Jupyter/IPython cell: its lines in the remote traceback (the caller's
linecache holds them; the worker's file does not exist)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, executorfarm
from tests.helpers.executorfarm import ExecutorFarm

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared_farm = executorfarm.shared_farm
ex = executorfarm.ex

# -- the concurrent.futures contract: no future left pending, no worker killed --


def test_a_notebook_cells_function_shows_its_lines_in_the_remote_traceback(
    shared_farm: ExecutorFarm, tmp_path: Path
) -> None:
    # IPython compiles a cell under a file name of its own (/tmp/ipykernel_PID/HASH.py)
    # that exists nowhere, and keeps the cell's text in the kernel's linecache alone, with
    # no modification time. The worker cannot read it: the traceback a notebook showed
    # named the frame but none of the cell's code. The caller has the text and adds it.
    cell_file = tmp_path / "ipykernel_1" / "2871420987.py"  # never made, as IPython's
    script = tmp_path / "kernel.py"
    script.write_text(
        "import linecache, sys\n"
        "import farm\n"
        f"name = {str(cell_file)!r}\n"
        "cell = 'def divide(x):\\n    return x / 0  # the cell that fails\\n'\n"
        "linecache.cache[name] = (len(cell), None, cell.splitlines(True), name)\n"
        "exec(compile(cell, name, 'exec'))\n"
        "ex = farm.Executor(servers=sys.argv[1], key_file=sys.argv[2])\n"
        "print(ex.submit(divide, 1).exception(timeout=30).__cause__)\n"
        "ex.shutdown()\n"
    )
    run = subprocess.run(
        [sys.executable, str(script), shared_farm.addr, str(shared_farm.key)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    frame = f'  File "{cell_file}", line 2, in divide\n    return x / 0  # the cell that fails\n'
    assert frame in run.stdout, run.stdout
    assert run.stdout.count("the cell that fails") == 1, run.stdout
