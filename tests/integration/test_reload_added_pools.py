"""`farm reload` (`systemctl reload farm`) that adds pools: it answers once they serve."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.client import Client
from farm.server.store import SQLiteStore
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
        # Applied, yet not done: `farm reload` said "reloaded" first, then failed under it.
        assert "reloaded" not in broken.stdout, broken.stdout
        err = broken.stderr
        assert "reload incomplete: the pool(s) it added do not serve" in err, err
        assert "bad#0 cpu" in err and "failed to boot (RuntimeError: no model file" in err, err
        assert "shcrash#0 cpu" in err and "exited with code 1" in err, err
        # Why a command crash-loops is its output: `farm ps --json`'s last_exit quotes it too.
        assert "its last output: 'oops'" in err, err
        (row,) = up.workers("shcrash")
        assert "its last output: 'oops'" in row["last_exit"], row
        assert "do not serve (bad, shcrash)" in err and "Traceback" not in err, err
        # The journal said "reloaded" for it too, then why it was not: now what it started.
        said = up.log_path.read_text()
        assert "farm.toml applied; new workers of bad, shcrash start now" in said, said
        assert "INFO reloaded " not in said, said  # neither reload was done as it was read
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


def plant_escapes(tmp_path: Path) -> None:
    """bad.py: a module whose import raises with a message of terminal escapes (clear the
    screen, set the title), the text a worker's boot error then holds."""
    raw = "\\x1b[2J\\x1b]0;pwned\\x07"
    (tmp_path / "bad.py").write_text(f'raise RuntimeError("{raw}")\n\ndef run(job): ...\n')


def assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text)


def test_what_a_worker_s_boot_error_holds_reaches_no_terminal_raw(tmp_path: Path) -> None:
    # A module's exception text is the worker's to choose: farm reload and farm ps printed
    # it as it was, and the terminal obeyed its escapes (cleared, retitled).
    plant_escapes(tmp_path)
    up = FarmUp(tmp_path, BASE)
    try:
        up.expect_notify("READY=1")
        up.write_config(BASE + BROKEN.split("[functions.shcrash]")[0])
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1 and "failed to boot (RuntimeError" in out.stderr, out.stderr
        assert_escaped(out.stderr)
        (row,) = up.workers("bad")
        assert "\x1b" in row["last_exit"]  # --json keeps it: JSON escapes it itself
        ps = farm_cli("ps", "--control", up.control)
        assert "failed to boot (RuntimeError" in ps.stdout, ps.stdout
        assert_escaped(ps.stdout)
    finally:
        assert up.stop() == 0


def test_a_changed_pool_s_boot_error_reaches_no_terminal_raw_either(tmp_path: Path) -> None:
    # The same text through a changed pool's replacement (farm reload, farm restart): the
    # reload's "failed to boot (...)" line carried the worker's escapes to the terminal.
    plant_escapes(tmp_path)
    up = FarmUp(tmp_path, BASE)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        up.write_config(BASE.replace("workers.text:reverse", "bad:run"))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1 and "failed to boot (RuntimeError" in out.stderr, out.stderr
        assert_escaped(out.stderr)
        assert "\\x1b]0;pwned\\x07" in out.stderr, repr(out.stderr)  # shown, as text
    finally:
        assert up.stop() == 0


def test_at_its_deadline_the_reload_names_the_slots_still_starting_too(tmp_path: Path) -> None:
    # One added pool's process ended (a module that raised) and another's still started
    # (a command that never registers): the reload named the ended one alone, then said
    # "do not serve (bad, sleeper)" with nothing about sleeper.
    (tmp_path / "bad.py").write_text('raise RuntimeError("no model file")\n\ndef run(job): ...\n')
    up = FarmUp(tmp_path, BASE, supervisor="boot_timeout = 3")
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        sleeper = '\n[functions.sleeper]\ncommand = ["sleep", "1000"]\nworkers = 1\n'
        up.write_config(BASE + BROKEN.split("[functions.shcrash]")[0] + sleeper)
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1, out.stdout + out.stderr
        err = out.stderr
        assert "bad#0 cpu" in err and "failed to boot (RuntimeError: no model file" in err, err
        assert re.search(r"sleeper#0 cpu\d+: added by the reload, not serving 5s after", err), err
        assert "do not serve (bad, sleeper)" in err, err
    finally:
        assert up.stop() == 0


def test_a_reload_s_timeout_bounds_its_wait_for_an_added_pool(tmp_path: Path) -> None:
    # systemd kills `systemctl reload` at TimeoutStartSec (60 s), before the reload's own
    # boot_timeout + 2 (62 s) ran out: the unit passes --timeout, and the reload names the
    # slot still starting within it.
    up = FarmUp(tmp_path, BASE)  # boot_timeout 60: without --timeout this test times out
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        up.write_config(BASE + '\n[functions.sleeper]\ncommand = ["sleep", "1000"]\nworkers = 1\n')
        began = time.monotonic()
        out = farm_cli("reload", "--control", up.control, "--timeout", "2", timeout=30)
        assert out.returncode == 1, out.stdout + out.stderr
        assert time.monotonic() - began < 20, out.stderr
        assert re.search(r"sleeper#0 cpu\d+: added by the reload, not serving 2s after", out.stderr)
        assert "reloaded" not in out.stdout, out.stdout
        # A changed pool's restart is bounded as well: its new process hangs at import.
        (tmp_path / "hang.py").write_text("import time\ntime.sleep(300)\n\ndef run(job): ...\n")
        up.write_config(BASE.replace("workers.text:reverse", "hang:run"))
        began = time.monotonic()
        out = farm_cli("reload", "--control", up.control, "--timeout", "2", timeout=30)
        assert out.returncode == 1 and time.monotonic() - began < 20, out.stdout + out.stderr
        assert "reload incomplete: the restart goes on past --timeout" in out.stderr, out.stderr
        assert "reloaded" not in out.stdout, out.stdout
        bad = farm_cli("reload", "--control", up.control, "--timeout", "0")
        assert bad.returncode == 2 and "--timeout must be" in bad.stderr, bad.stderr
    finally:
        assert up.stop() == 0


def test_a_pool_added_while_the_job_server_is_down_is_not_called_reloaded(
    tmp_path: Path,
) -> None:
    # The job server backed off (its store refused); a reload added a pool whose module
    # raises: no slot of it started (workers wait for the server), and "reloaded", exit 0,
    # came at once; the pool crash-looped silently once the server was back.
    (tmp_path / "bad.py").write_text('raise RuntimeError("no model file")\n\ndef run(job): ...\n')
    store = tmp_path / "queue.db"
    held = SQLiteStore(tmp_path / "held.db")
    up = FarmUp(tmp_path, BASE, supervisor="boot_timeout = 3", store=store)
    try:
        up.expect_notify("READY=1")
        # What the reload's check reads of it looks right: the server alone refuses it. A
        # damaged store no longer does (farm check and reload refuse it, exit 2): a farm store
        # this test holds open, which a new server finds in use.
        up.server_backing_off(tmp_path / "held.db")
        up.config.write_text(up.config.read_text() + BROKEN.split("[functions.shcrash]")[0])
        began = time.monotonic()
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1, out.stdout + out.stderr
        assert time.monotonic() - began >= 4, out.stderr  # it waited for the slot to start
        err = out.stderr
        assert "bad#0: added by the reload, no process started" in err, err
        assert "the job server is not ready" in err and "do not serve (bad)" in err, err
    finally:
        held.close()  # the server may start again: a stop waits on no backoff
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


# A raw worker's start: a connection to the farm's first server and a packet maker.
RAW_WORKER = """\
import os, socket, struct, sys
host, port = os.environ["FARM_SERVERS"].split(",")[0].rsplit(":", 1)
def pkt(t, *x):
    b = b"\\0".join(x)
    return b"\\0REQ" + struct.pack(">II", t, len(b)) + b
s = socket.create_connection((host, int(port)))
"""

# A command worker that registers another name than its pool's (`wrong`), then sleeps in
# the server (PRE_SLEEP) for as long as it lives, as a PHP script with a typo does.
WRONG_NAME = (
    RAW_WORKER
    + """\
s.sendall(pkt(1, b"wrong") + pkt(4))  # CAN_DO wrong, PRE_SLEEP
while s.recv(4096):
    pass
"""
)


def test_a_reload_names_an_added_command_pool_s_wrong_registration_at_once(
    tmp_path: Path,
) -> None:
    # The supervisor logged "registered wrong, not rightname: not serving" at once; the
    # reload waited out boot_timeout + 2 (62 s) and said only "not serving 62s after it".
    script = tmp_path / "wrong.py"
    script.write_text(WRONG_NAME)
    up = FarmUp(tmp_path, BASE, supervisor="boot_timeout = 20")
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        pool = f'\n[functions.rightname]\ncommand = ["{sys.executable}", "{script}"]\nworkers = 1\n'
        up.write_config(BASE + pool)
        began = time.monotonic()
        out = farm_cli("reload", "--control", up.control, timeout=40)
        assert out.returncode == 1, out.stdout + out.stderr
        said = r"rightname#0 cpu\d+: added by the reload, registered wrong, not rightname: not"
        assert re.search(said + r" serving \(now starting\)", out.stderr), out.stderr
        assert time.monotonic() - began < 15, out.stderr  # not the whole 22 s
        assert "do not serve (rightname)" in out.stderr, out.stderr
        # `farm ps` says it under the table too, as it says a failing slot's last end.
        ps = farm_cli("ps", "--control", up.control)
        said = r"^rightname#0 cpu\d+ starting: registered wrong, not rightname$"
        assert re.search(said, ps.stdout, re.M), ps.stdout
    finally:
        assert up.stop() == 0


# A command worker that registers a name of its own first (`helper`), then its pool's once
# its slow init (the gate its argument names) is done, then sleeps in the server.
SLOW_SECOND_NAME = (
    RAW_WORKER
    + """\
s.sendall(pkt(1, b"helper"))  # CAN_DO helper
gate = socket.socket(socket.AF_UNIX)
gate.connect(sys.argv[1])
gate.recv(1)
s.sendall(pkt(1, b"rightname") + pkt(4))  # CAN_DO rightname, PRE_SLEEP
while s.recv(4096):
    pass
"""
)


@pytest.mark.parametrize("asks", [False, True], ids=["asks-at-the-end", "asks-after-each"])
def test_a_reload_waits_for_an_added_command_worker_that_registers_its_pool_s_name_late(
    tmp_path: Path, asks: bool
) -> None:
    # 2 s after it registered `helper` the reload failed it, "registered helper, not
    # rightname: not serving", exit 1, while it served once its init was done. Only one that
    # asks for jobs (GRAB_JOB, PRE_SLEEP) with other names alone, and registers nothing new
    # for REGISTRATION_SETTLE (5 s), is named before the wait's end. GearmaNode's
    # Worker.addFunction sends CAN_DO, then PRE_SLEEP, for each function ("asks-after-each"):
    # its `helper` counted as final as soon as it was seen.
    script = tmp_path / "slow.py"
    text = SLOW_SECOND_NAME
    if asks:
        text = text.replace('pkt(1, b"helper"))', 'pkt(1, b"helper") + pkt(4))')
        assert 'pkt(1, b"helper") + pkt(4))' in text
    script.write_text(text)
    gate = Gate(tmp_path / "gate")
    up = FarmUp(tmp_path, BASE, supervisor="boot_timeout = 20")
    reload = None
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        argv = json.dumps([sys.executable, str(script), gate.path])
        up.write_config(BASE + f"\n[functions.rightname]\ncommand = {argv}\nworkers = 1\n")
        reload = subprocess.Popen(
            [sys.executable, "-m", "farm", "reload", "--control", up.control],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        gate.arrived(1)
        said = wait_for(
            "its first registration seen",
            lambda: next((r["not_serving"] for r in up.workers("rightname")), None),
        )
        if not asks:
            with pytest.raises(subprocess.TimeoutExpired):
                reload.wait(3)  # no verdict while it has not asked for jobs
        gate.open()  # its next name (asks: within REGISTRATION_SETTLE)
        assert said == "registered helper so far, not rightname"
        out, err = reload.communicate(timeout=30)
        assert (reload.returncode, out.strip()) == (0, "reloaded"), out + err
        assert up.workers("rightname", "running")
    finally:
        gate.open()
        if reload is not None and reload.poll() is None:
            reload.kill()
            reload.communicate()
        assert up.stop() == 0
