"""`farm reload` (`systemctl reload farm`) that adds pools: it answers once they serve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

BASE = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""

GOOD = """
[functions.upper]
target = "workers.text:upper"
workers = 2
"""

BROKEN = """
[functions.bad]
target = "bad:run"
workers = 1

[functions.shcrash]
command = ["sh", "-c", "echo oops; exit 1"]
workers = 1
"""


def test_a_reload_that_adds_a_pool_that_does_not_start_fails_naming_it(tmp_path: Path) -> None:
    # An operator added a pool whose module raised at import (or a command that exited at
    # once) and ran `systemctl reload farm`: "reloaded", exit 0, while the pool crash-looped
    # with backoff; only the journal's warnings said so. A changed pool's reload fails so.
    (tmp_path / "bad.py").write_text('raise RuntimeError("no model file")\n\ndef run(job): ...\n')
    up = FarmUp(tmp_path, BASE)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        up.write_config(BASE + GOOD)
        added = farm_cli("reload", "--control", up.control)
        assert (added.returncode, added.stdout.strip()) == (0, "reloaded"), added.stderr
        assert len(up.workers("upper", "idle")) == 2  # answered once both served
        up.write_config(BASE + GOOD + BROKEN)
        broken = farm_cli("reload", "--control", up.control)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert broken.stdout.strip() == "reloaded"  # the file was applied
        err = broken.stderr
        assert "bad#0 cpu" in err and "failed to boot (RuntimeError: no model file" in err, err
        assert "shcrash#0 cpu" in err and "exited with code 1" in err, err
        # Why a command crash-loops is its output: `farm ps --json`'s last_exit quotes it too.
        assert "its last output: 'oops'" in err, err
        (row,) = up.workers("shcrash")
        assert "its last output: 'oops'" in row["last_exit"], row
        assert "do not serve (bad, shcrash)" in err and "Traceback" not in err, err
        assert len(up.workers("upper", "idle")) == 2 and up.workers("reverse", "idle")
        # `farm ps` showed the slots "failing" and not why: that took the journal.
        ps = farm_cli("ps", "--control", up.control)
        assert ps.returncode == 0, ps.stderr
        # Its retry comes 2 s after a boot failure: the slot may read starting or backoff too.
        said = r"^bad#0 cpu\d+ (failing|starting|backoff): failed to boot \(RuntimeError"
        assert re.search(said, ps.stdout, re.M), ps.stdout
        assert re.search(r"^shcrash#0 cpu\d+ \w+: .*its last output: 'oops'", ps.stdout, re.M)
    finally:
        assert up.stop() == 0


NAP = """
from tests.helpers.calls import wait_gate

def nap(job):
    wait_gate(job.text)
    return b"awake"
"""


def test_a_pool_added_back_while_its_old_worker_drains_is_followed_by_its_new_slots(
    tmp_path: Path,
) -> None:
    # The removed pool's worker, draining with its job, is not the added pool's: the reload
    # answers once the new slot serves, not after boot_timeout with "not serving".
    (tmp_path / "sleepy.py").write_text(NAP)
    gate = Gate(tmp_path / "gate")
    nap = '\n[functions.nap]\ntarget = "sleepy:nap"\nworkers = 1\n'
    up = FarmUp(tmp_path, BASE + nap.replace("workers = 1", "workers = 2"))
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1, "nap": 2})
        with Client(up.addr) as client:
            tasks = [client.submit("nap", str(gate.path)) for _ in range(2)]
            gate.arrived(2)
            up.write_config(BASE)
            assert farm_cli("reload", "--control", up.control).returncode == 0
            wait_for("its workers draining", lambda: len(up.workers("nap", "draining")) == 2)
            up.write_config(BASE + nap)  # back, with one slot: nap#1 is the old pool's alone
            again = farm_cli("reload", "--control", up.control, timeout=30)
            assert (again.returncode, again.stderr) == (0, ""), again.stdout
            assert up.workers("nap", "idle") and len(up.workers("nap", "draining")) == 2
            gate.open()
            assert [client.wait(task, timeout=20) for task in tasks] == [b"awake"] * 2
    finally:
        gate.open()
        assert up.stop() == 0
