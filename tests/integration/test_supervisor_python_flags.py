"""`python -s -m farm up`, `python -I -m farm up`, PYTHONNOUSERSITE=1: the operator kept the
user's site directory (~/.local) out of the supervisor's interpreter, and its job server and
workers, started with `python -P`, imported from it all the same."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp


def _venv_reads_no_user_site() -> bool:
    """Whether this interpreter is a virtualenv's made without --system-site-packages, as
    `make test`'s ./.venv and a `python3.13 -m venv` are: site.py then reads no user site
    directory at all, whatever the flags, so the plain case sees none either (its -s, or
    the lack of it, is still seen in ``no_user_site`` and the command line)."""
    if sys.prefix == sys.base_prefix:
        return False
    try:
        lines = (Path(sys.prefix) / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return False
    for line in lines:  # site.venv's reading: the key absent is "true"
        key, _, value = line.partition("=")
        if key.strip().lower() == "include-system-site-packages":
            return value.strip().lower() != "true"
    return False


VENV_READS_NO_USER_SITE = _venv_reads_no_user_site()

PROBE = """
import json
import sys


def flags(job):
    return json.dumps(
        {
            "no_user_site": sys.flags.no_user_site,
            "safe_path": sys.flags.safe_path,
            "user_site": [p for p in sys.path if p.startswith(USER_BASE)],
            "interpreter": sys.orig_argv[1 : sys.orig_argv.index("-m")],
        }
    )
"""

POOL = """
[functions.flags]
target = "flagprobe:flags"
workers = 1
"""


CASES = [
    ([], {}, False),  # the probe sees a user site directory where nothing keeps it out
    (["-s"], {}, True),
    (["-I"], {}, True),
    ([], {"PYTHONNOUSERSITE": "1"}, True),
]
IDS = ["plain", "-s", "-I", "PYTHONNOUSERSITE"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flags", "env", "kept_out"), CASES, ids=IDS)
def test_the_children_keep_the_user_site_directory_out_as_the_supervisor_does(
    tmp_path: Path, flags: list[str], env: dict[str, str], kept_out: bool
) -> None:
    base = tmp_path / "userbase"  # a user's ~/.local, by PYTHONUSERBASE
    site = base / "lib" / "python{}.{}".format(*sys.version_info[:2])
    (site / "site-packages").mkdir(parents=True)
    (tmp_path / "flagprobe.py").write_text(f"USER_BASE = {str(base)!r}\n" + PROBE)
    up = FarmUp(tmp_path, POOL, start=False, extra_env={"PYTHONUSERBASE": str(base), **env})
    up.python_flags = flags
    # -I reads no PYTHONPATH: the checkout goes on sys.path by hand, as an installed farm is
    up.code = f"import sys; sys.path[:0] = [{str(ROOT)!r}]; from farm.cli import main; main()"
    up.start()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"flags": 1})
        with farm.Client(up.addr) as client:
            seen = json.loads(client.call("flags", "", timeout=10))
        assert seen["safe_path"], "-P stays"
        assert seen["no_user_site"] == int(kept_out), seen
        assert bool(seen["user_site"]) == (not kept_out and not VENV_READS_NO_USER_SITE), seen
        # Its own flag, not only the environment it inherits: under PYTHONNOUSERSITE the two
        # lines above held before the supervisor passed -s on, and so proved nothing there.
        assert seen["interpreter"] == (["-P", "-s"] if kept_out else ["-P"]), seen
    finally:
        up.stop()


@pytest.mark.parametrize(("flags", "env", "kept_out"), CASES, ids=IDS)
def test_the_job_server_starts_as_the_workers_do(
    tmp_path: Path, flags: list[str], env: dict[str, str], kept_out: bool
) -> None:
    # Its process title hides its command line once it runs: the supervisor's for it.
    config = tmp_path / "farm.toml"
    config.write_text(
        f'[server]\nlisten = ["unix:{tmp_path}/gearman.sock"]\nstore = "none"\n'
        '[supervisor]\nmetrics = "off"\n'
    )
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT)!r}]; from farm.config import load;"
        " from farm.pools.localserver import LocalServer;"
        f" print(LocalServer(load({str(config)!r}).server, {{}}).argv())"
    )
    out = subprocess.run(
        [sys.executable, *flags, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    argv = ast.literal_eval(out.stdout)
    interpreter = argv[1 : argv.index("-m")]
    assert interpreter == (["-P", "-s"] if kept_out else ["-P"]), argv


@pytest.mark.timeout(60)
def test_a_farm_in_python_development_mode_logs_no_warning_of_its_own(tmp_path: Path) -> None:
    # PYTHONDEVMODE (`python -X dev` for every process of the farm), as an operator chasing
    # a problem runs it: the supervisor left its loop's socket pair to the interpreter's
    # exit (a ResourceWarning each), and under Python 3.12 and later each worker it forked
    # beside its metrics thread was warned of (farm.pools.spawn).
    (tmp_path / "flagprobe.py").write_text("USER_BASE = ''\n" + PROBE)
    up = FarmUp(tmp_path, POOL, extra_env={"PYTHONDEVMODE": "1"})
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"flags": 1})
        with farm.Client(up.addr) as client:
            assert json.loads(client.call("flags", "", timeout=10))["safe_path"]
    finally:
        assert up.stop() == 0
    log = up.log_path.read_text()  # all of it: the lines after the stop are the exit's
    assert "supervisor stopped" in log, log
    assert not re.search(r"\w+Warning: ", log), log
