"""Log lines under systemd: journald records each line's time, and the name and pid of the
process that wrote it, so `farm up`'s lines do not say them again (docs/monitoring.md,
"Under systemd")."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

import farm
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

WARNER = """
import sys

def warn(job):
    print("careful", file=sys.stderr)
    return b"warned"
"""

#: A line's time as the text format writes it: "2026-12-06 16:44:12,000".
TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def test_journal_lines_leave_the_time_and_the_supervisors_pid_to_journald(
    tmp_path: Path,
) -> None:
    # `journalctl -u farm` showed "Dec 06 16:44:12 host farm[29924]: 2026-12-06
    # 16:44:12,000 farm[29924] INFO ...": the time twice, and the supervisor's name and pid
    # twice. The server's and a worker's lines keep their role and pid: the supervisor's
    # stderr carries them, so the journal puts its pid on them, not theirs.
    (tmp_path / "warner.py").write_text(WARNER)
    up = FarmUp(tmp_path, '[functions.warn]\ntarget = "warner:warn"\nworkers = 1\n', start=False)
    info = os.fstat(up.log.fileno())
    up.env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"  # the supervisor's stderr
    up.start()
    try:
        up.expect_notify("READY=1")
        rows = up.ps()
        (server,) = [r["pid"] for r in rows if r["function"] == "server"]
        (worker,) = [r["pid"] for r in rows if r["function"] == "warn"]
        with farm.Client(up.addr) as client:
            assert client.call("warn", b"", timeout=30) == b"warned"
        said = wait_for(
            "the worker's warning",
            lambda: re.search(r"(?m)^.*careful$", up.read_log()),
        )
        assert said.group(0) == f"<4>farm-worker warn#0[{worker}] WARNING careful", said.group(0)
        # A line of the server's own (it logs warnings and worse under `farm up`): a SIGTERM
        # of its own while the supervisor lives is left to the supervisor, and said.
        os.kill(server, signal.SIGTERM)
        said = wait_for(
            "the server's warning",
            lambda: re.search(r"(?m)^.*SIGTERM left to farm up.*$", up.read_log()),
        )
        assert said.group(0).startswith(f"<4>farm-server[{server}] WARNING SIGTERM"), said
        lines = up.read_log().splitlines()
        assert f"<6>INFO job server starting (pid {server})" in lines, lines
        assert not [line for line in lines if TIME.search(line)], lines
        assert not [line for line in lines if re.match(r"<\d>farm\[", line)], lines
    finally:
        assert up.stop() == 0
