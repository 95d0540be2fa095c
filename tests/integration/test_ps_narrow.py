"""`farm ps` on a narrow terminal (a phone's SSH app, a split tmux pane): every line within
COLUMNS, and what matters of each process -- its pid, what it is, its state, its job --
still there; `farm ps --watch` (farm top's process table) within it too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.cli.rows import cells
from farm.protocol import PacketType as T
from tests.helpers.clirun import cli
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

POOLS = """
[functions.slow]
target = "slowjobs:slow"
workers = 1

[functions.thumbnail_resize]
target = "slowjobs:slow"
workers = 1

[functions.broken]
target = "broken:job"
workers = 1
"""


def test_ps_fits_a_40_column_terminal_and_keeps_pid_function_state_and_job(
    tmp_path: Path,
) -> None:
    (tmp_path / "slowjobs.py").write_text(
        "import time\n\ndef slow(job):\n    time.sleep(float(job.data or 30))\n    return b'ok'\n"
    )
    # A slot that cannot boot: `farm ps` says why under its table, a long line of its own.
    (tmp_path / "broken.py").write_text(
        "raise RuntimeError('no model file here')\n\ndef job(j):\n    return b''\n"
    )
    up = FarmUp(tmp_path, POOLS, grace=1)
    try:
        up.expect_notify("READY=1")
        client = Peer(up.addr)
        client.send(T.SUBMIT_JOB_BG, "slow", "", "30")
        handle = client.expect(T.JOB_CREATED).args[0].decode()
        wait_for("a busy worker", lambda: up.workers("slow", "busy"))
        wait_for("why the broken slot does not serve", lambda: up.workers("broken")[0]["last_exit"])
        narrow = dict(os.environ, COLUMNS="40")
        out = cli("ps", "--control", up.control, env=narrow, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert all(cells(line) <= 40 for line in lines), "\n" + out.stdout
        rows = up.ps()  # what the supervisor says now: each process is in the table
        for row in rows:
            if row["function"] == "broken":  # rebooting meanwhile, under another pid
                continue
            line = next((x for x in lines if x.split()[:1] == [str(row["pid"])]), None)
            assert line is not None, (row, out.stdout)
            assert row["function"] in line, (row, out.stdout)
            assert row["state"] in line.split(), (row, out.stdout)
        # The job in hand and the broken slot's reason: wrapped, nothing cut off (a handle
        # longer than a line, of a long host name, is wrapped within it too).
        assert handle in "".join(line.strip() for line in lines), out.stdout
        busy = next(i for i, line in enumerate(lines) if line.split()[-1:] == ["busy"])
        assert lines[busy + 1].split()[0] == "job", out.stdout
        assert "no model file here" in " ".join(out.stdout.split()), out.stdout
        assert "failed to boot" in " ".join(out.stdout.split()), out.stdout
        assert "…" not in out.stdout, out.stdout

        # As wide as it is, the table is drawn as it always was: JOB in its column.
        wide = cli("ps", "--control", up.control, env=dict(os.environ, COLUMNS="200"), timeout=30)
        header, *table = wide.stdout.splitlines()
        assert header.split()[-1] == "JOB", wide.stdout
        busy = next(r for r in table if " busy " in r)
        assert handle in busy and "slow" in busy, wide.stdout

        watch = ["ps", "--watch", "--count", "1", "--control", up.control]
        drawn = cli(*watch, env=dict(narrow, LINES="30"), timeout=30)
        assert drawn.returncode == 0, drawn.stderr
        assert all(cells(line) <= 40 for line in drawn.stdout.splitlines()), drawn.stdout
        assert "PID" in drawn.stdout and "FUNCTION" in drawn.stdout, drawn.stdout
    finally:
        assert up.stop() == 0
