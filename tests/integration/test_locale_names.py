"""`farm up` under a locale whose encoding is not UTF-8 (ISO-8859-1: exec encodes a child's
arguments and environment in it): a pool's name goes to the job server, its Python workers
and its command workers' $FARM_FUNCTION as the UTF-8 the wire carries, whatever the locale.
A name Latin-1 has no byte for (中文) failed the job server's exec, so the farm did not
start; one it has (cmdé) reached a command worker as its Latin-1 byte, a function no client
names, and its jobs waited for ever."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import php, skip_or_fail

pytestmark = pytest.mark.timeout(120)

#: A PHP worker serving what $FARM_FUNCTION names, as its bytes (getenv's).
PHP_WORKER = """<?php
$w = new GearmanWorker();
$w->addServer(getenv('FARM_SERVER_HOST'), (int) getenv('FARM_SERVER_PORT'));
$w->addFunction(getenv('FARM_FUNCTION'), function ($job) { return strrev($job->workload()); });
while ($w->work());
"""


def latin1_locale(tmp_path: Path) -> dict[str, str]:
    """The environment of a Latin-1 locale, compiled here (no system locale is assumed)."""
    localedef = shutil.which("localedef")
    if localedef is None:
        skip_or_fail("localedef is not installed (glibc's locales)")
    where = tmp_path / "locales"
    where.mkdir()
    made = subprocess.run(
        [localedef, "-f", "ISO-8859-1", "-i", "en_US", str(where / "en_US.ISO-8859-1")],
        capture_output=True,
        text=True,
    )
    if not (where / "en_US.ISO-8859-1").is_dir():
        skip_or_fail(f"localedef cannot make en_US.ISO-8859-1: {made.stderr.strip()}")
    return {"LOCPATH": str(where), "LC_ALL": "en_US.ISO-8859-1", "LANG": "en_US.ISO-8859-1"}


def test_a_pool_latin1_cannot_name_starts_and_serves(tmp_path: Path) -> None:
    pools = '[functions."中文"]\ntarget = "workers.text:reverse"\nworkers = 1\n'
    locale = latin1_locale(tmp_path)
    up = FarmUp(tmp_path, pools, extra_env=locale)
    try:
        # farm check loads the target as a worker does, in a worker's process: that exec too
        check = subprocess.run(
            [sys.executable, "-m", "farm.cli", "check", "-c", str(up.config)],
            capture_output=True,
            env={**up.env, **locale},
            timeout=60,
        )
        assert check.returncode == 0, check.stderr.decode("latin-1")
        up.expect_notify("READY=1")
        up.wait_idle({"中文": 1})
        with Client(up.addr) as client:
            assert client.call("中文", b"abc", timeout=20) == b"cba"
    finally:
        assert up.stop() == 0


def test_a_command_pool_s_farm_function_is_utf8_under_latin1(tmp_path: Path) -> None:
    (tmp_path / "w.php").write_text(PHP_WORKER)
    pools = f'[functions."cmdé"]\ncommand = ["{php()}", "{tmp_path / "w.php"}"]\nworkers = 1\n'
    up = FarmUp(tmp_path, pools, extra_env=latin1_locale(tmp_path))
    try:
        up.expect_notify("READY=1")
        with Client(up.addr) as client:
            assert client.call("cmdé", b"abc", timeout=20) == b"cba"
    finally:
        assert up.stop() == 0
