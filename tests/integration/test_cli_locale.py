"""The `farm` commands under a locale whose encoding is not UTF-8 (ISO-8859-1, as
PYTHONIOENCODING sets it here; LANG=de_DE.ISO-8859-1 does the same): a name the terminal's
encoding has no character for is written as Python escapes it (\\u4e2d), not a traceback,
and a Latin-1 é still as é."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer
from tests.helpers.rawjobs import submit

pytestmark = pytest.mark.timeout(90)

LATIN1 = dict(os.environ, PYTHONIOENCODING="latin-1", COLUMNS="160", LINES="60")


def latin1_cli(*args: str) -> str:
    """`farm ARGS` with a Latin-1 standard output: exit 0, no traceback; what it printed."""
    run = subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        cwd=ROOT,
        capture_output=True,
        env=dict(LATIN1, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    err = run.stderr.decode("latin-1")
    assert run.returncode == 0 and "Traceback" not in err, err
    return run.stdout.decode("latin-1")


def test_status_and_jobs_print_names_latin1_cannot_hold(farm_server) -> None:
    client = Peer(farm_server.addr)
    try:
        for name in ("中文", "café", b"bad\xff"):  # the last a byte that is not UTF-8
            submit(client, name, b"x", ptype=T.SUBMIT_JOB_BG)
    finally:
        client.close()
    for command in ("status", "jobs"):
        out = latin1_cli(command, "--server", farm_server.addr)
        assert "\\u4e2d\\u6587" in out and "café" in out and "bad\\ufffd" in out, out


def test_ps_and_top_print_a_pool_latin1_cannot_hold(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, '[functions."中文"]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"中文": 1})
        assert "\\u4e2d\\u6587" in latin1_cli("ps", "--control", up.control)
        # top's own marks too: its sort column's ▼ had no Latin-1 byte, whatever the names.
        top = latin1_cli("top", "--once", "--control", up.control)
        assert "\\u4e2d\\u6587" in top and "FUNCTION" in top, top
    finally:
        assert up.stop() == 0
