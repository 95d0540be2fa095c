"""`farm restart` and `farm reload --restart`: new processes, new code, no downtime."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

TARGET = 8

# Every job it runs appends its payload to a file: a job run twice shows up twice.
COUNTED = """
import os

def run(job):
    fd = os.open(os.environ["COUNTED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, job.data + b"\\n")
    finally:
        os.close(fd)
    return b"VERSION:" + job.data
"""

# A client in another process: submits jobs back to back until told to stop (stdin closes),
# prints every payload it got an answer for, and "FAILED ..." for any that failed.
STREAM = """
import sys, threading
from farm.client import Client

addr, prefix = sys.argv[1], sys.argv[2]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with Client(addr) as client:
    i = 0
    while not stop.is_set():
        payload = f"{prefix}-{i}"
        try:
            out = client.call("counted", payload, timeout=30)
            print(payload if out.endswith(payload.encode()) else f"FAILED wrong {out!r}")
        except Exception as e:
            print(f"FAILED {payload} {type(e).__name__}: {e}")
        sys.stdout.flush()
        i += 1
"""


def counted_farm(tmp_path: Path, version: str = "v1") -> FarmUp:
    (tmp_path / "counted.py").write_text(COUNTED.replace("VERSION", version))
    return FarmUp(
        tmp_path,
        f"""
        [functions.counted]
        target = "counted:run"
        workers = {TARGET}
        """,
        extra_env={"COUNTED_LOG": str(tmp_path / "ran.log")},
    )


def test_restart_under_load_runs_every_job_once_and_never_drops_below_target_minus_one(
    tmp_path: Path,
) -> None:
    up = counted_farm(tmp_path)
    try:
        up.expect_notify("READY=1")
        before = {r["pid"] for r in up.wait_idle({"counted": TARGET})}
        streams = [
            subprocess.Popen(
                [sys.executable, "-c", STREAM, up.addr, f"c{n}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=up.env,
            )
            for n in range(3)
        ]
        serving: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                rows = up.workers("counted")
                serving.append(sum(r["state"] in ("idle", "busy") for r in rows))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        wait_for("jobs flowing", lambda: (tmp_path / "ran.log").exists())
        sampler.start()
        try:
            done = farm_cli("restart", "--control", up.control)
        finally:
            sampling.set()
            sampler.join()
        assert done.returncode == 0, done.stderr
        assert f"counted: {TARGET}/{TARGET} replaced" in done.stdout
        wait_for(  # the streams go on: a few of their jobs run on the new processes
            "jobs done by the new processes",
            lambda: sum(r["jobs"] for r in up.workers("counted") if r["pid"] not in before) >= 3,
        )
        answered: list[str] = []
        for proc in streams:
            out, _ = proc.communicate("", timeout=40)
            answered += out.split()
        assert not [a for a in answered if a.startswith("FAILED")], answered
        ran = (tmp_path / "ran.log").read_text().split()
        twice = [p for p, n in Counter(ran).items() if n > 1]
        assert not twice, twice  # no job ran twice
        assert sorted(ran) == sorted(answered), set(ran) ^ set(answered)  # and each ran once
        assert len(answered) > 50
        assert serving and min(serving) >= TARGET - 1, serving
        after = {r["pid"] for r in up.wait_idle({"counted": TARGET})}
        assert not before & after  # every process is new
        assert "crashed" not in up.read_log()
    finally:
        assert up.stop() == 0


def test_restart_picks_up_code_changed_on_disk_and_one_slot_alone(tmp_path: Path) -> None:
    up = counted_farm(tmp_path)
    try:
        up.expect_notify("READY=1")
        rows = up.wait_idle({"counted": TARGET})
        (tmp_path / "counted.py").write_text(COUNTED.replace("VERSION", "v2"))
        one = farm_cli("restart", "counted#3", "--control", up.control)
        assert one.returncode == 0, one.stderr
        assert "counted: 1/1 replaced" in one.stdout
        now = up.wait_idle({"counted": TARGET})
        changed = {r["slot"] for r in now} - {
            r["slot"] for r in now if r["pid"] in {x["pid"] for x in rows}
        }
        assert changed == {3}
        assert farm_cli("restart", "--control", up.control).returncode == 0
        got = farm_cli("submit", "counted", "x", "--server", up.addr)
        assert got.stdout.strip() == "v2:x", got.stderr
        # a deploy is no restart: `farm ps` keeps RESTARTS for ends nobody asked for
        assert {r["restarts"] for r in up.wait_idle({"counted": TARGET})} == {0}
    finally:
        assert up.stop() == 0


def test_a_replacement_that_cannot_boot_fails_the_restart_and_keeps_the_old_ones(
    tmp_path: Path,
) -> None:
    up = counted_farm(tmp_path)
    try:
        up.expect_notify("READY=1")
        before = {r["pid"] for r in up.wait_idle({"counted": TARGET})}
        (tmp_path / "counted.py").write_text("raise ImportError('broken deploy')\n")
        failed = farm_cli("restart", "--control", up.control)
        assert failed.returncode == 1
        # why it did not boot, not only its exit code: the deploy's operator reads it here
        where = tmp_path / "counted.py"  # which file, when a deploy ships several of that name
        assert f"(ImportError: broken deploy at {where}:1); the old one" in failed.stderr, failed
        assert {r["pid"] for r in up.wait_idle({"counted": TARGET})} == before
        got = farm_cli("submit", "counted", "x", "--server", up.addr)
        assert got.stdout.strip() == "v1:x", got.stderr
        bad = farm_cli("restart", "nope", "--control", up.control)
        assert bad.returncode == 2
        assert "no pool or function 'nope'" in bad.stderr
    finally:
        assert up.stop() == 0


def test_reload_restart_rereads_the_config_then_replaces_every_worker(tmp_path: Path) -> None:
    up = counted_farm(tmp_path)
    try:
        up.expect_notify("READY=1")
        before = {r["pid"] for r in up.wait_idle({"counted": TARGET})}
        up.write_config(
            textwrap.dedent("""
            [functions.counted]
            target = "counted:run"
            workers = 4
            """)
        )
        done = farm_cli("reload", "--restart", "--control", up.control)
        assert done.returncode == 0, done.stderr
        assert "reloaded" in done.stdout and "replaced" in done.stdout
        after = {r["pid"] for r in up.wait_idle({"counted": 4})}
        assert not before & after
    finally:
        assert up.stop() == 0


# A job blocked in a C library's read, which (as many C libraries do) gives up on EINTR:
# it reads a FIFO the test writes to once the worker has had its drain's SIGTERM.
C_READ = """
import ctypes, os

def run(job):
    fd = os.open(job.data.decode(), os.O_RDONLY)
    open(job.data.decode() + ".reading", "w").close()
    buf = ctypes.create_string_buffer(16)
    libc = ctypes.CDLL(None, use_errno=True)
    got = libc.read(fd, buf, 16)
    if got < 0:
        raise OSError(ctypes.get_errno(), "the C read failed")
    return buf.raw[:got]
"""


def test_a_deploy_breaks_no_blocking_c_call_in_the_job_in_hand(tmp_path: Path) -> None:
    # The drain's SIGTERM interrupted the job's system call: a C read returned EINTR and the
    # job failed (InterruptedError) the moment `farm restart` (or scale-down, reload, stop)
    # retired its worker, though the worker was meant to finish it.
    (tmp_path / "cread.py").write_text(C_READ)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # held open: the job's read blocks, not sees EOF
    up = FarmUp(tmp_path, '[functions.cread]\ntarget = "cread:run"\nworkers = 1\n')
    got: list[object] = []
    try:
        up.expect_notify("READY=1")
        (old,) = up.wait_idle({"cread": 1})

        def call() -> None:
            from farm.client import Client

            with Client(up.addr) as client:
                try:
                    got.append(client.call("cread", str(fifo), timeout=60))
                except Exception as e:
                    got.append(e)

        caller = threading.Thread(target=call)
        caller.start()
        wait_for("the job in its C read", (tmp_path / "fifo.reading").exists)
        done = farm_cli("restart", "--control", up.control)
        assert done.returncode == 0, done.stderr

        def delivered() -> bool:  # the SIGTERM is no longer pending: the read has had it
            try:
                status = Path(f"/proc/{old['pid']}/status").read_text()
            except FileNotFoundError:
                return True  # gone: its job broke off
            pending = re.findall(r"^(?:Sig|Shd)Pnd:\s*(\w+)", status, re.M)
            return all(int(mask, 16) == 0 for mask in pending)

        wait_for("the drain's SIGTERM delivered", delivered)
        os.write(writer, b"payload")
        caller.join(30)
        assert got == [b"payload"], up.read_log()
        assert "raised" not in up.read_log()
    finally:
        os.close(writer)
        assert up.stop() == 0


# Its module waits at import at the gate (tests.helpers.gate), once the test has made it:
# a restart's new processes stay starting, and the rollout under way, until it opens.
GATED = """
import os
from tests.helpers.calls import wait_gate

wait_gate(os.environ["GATE"])

def run(job):
    return b"ok"
"""


def test_a_pool_a_reload_removes_mid_restart_is_not_reported_left_on_old_code(
    tmp_path: Path,
) -> None:
    # Its slots not started yet stayed in the count: `farm restart` ended with "gone: 0/1
    # replaced", exit 0, as if a slot of it still ran the old code, of a pool no longer there.
    (tmp_path / "gated.py").write_text(GATED)
    kept = '[functions.kept]\ntarget = "gated:run"\nworkers = 1\n'
    gone = '[functions.gone]\ntarget = "gated:run"\nworkers = 2\n'  # one slot at a time
    gate_path = tmp_path / "gate"
    up = FarmUp(tmp_path, gone + kept, extra_env={"GATE": str(gate_path)})
    gate: Gate | None = None
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"gone": 2, "kept": 1})
        gate = Gate(gate_path)
        restart = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "restart", "gone", "--control", up.control],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for("a new process starting", lambda: up.workers("gone", "starting"))
        up.write_config(kept)
        assert farm_cli("reload", "--control", up.control).returncode == 0
        out, err = restart.communicate(timeout=30)
        assert restart.returncode == 0, out + err
        assert out.splitlines()[-2] == "gone: 0/0 replaced", out
    finally:
        if gate is not None:
            gate.open()
        assert up.stop() == 0


def test_a_reload_that_changes_no_pool_says_the_code_on_disk_waits_for_a_restart(
    tmp_path: Path,
) -> None:
    # An operator who edited a worker's code and ran `farm reload` (`systemctl reload farm`)
    # read "reloaded" while every job went on running the old code: a reload replaces only
    # the pools whose options changed, and said nothing of it.
    (tmp_path / "counted.py").write_text(COUNTED.replace("VERSION", "v1"))
    up = FarmUp(
        tmp_path,
        """
        [functions.counted]
        target = "counted:run"
        workers = 1
        """,
        extra_env={"COUNTED_LOG": str(tmp_path / "ran.log")},
    )
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"counted": 1})
        (tmp_path / "counted.py").write_text(COUNTED.replace("VERSION", "v2"))
        same = farm_cli("reload", "--control", up.control)
        assert same.returncode == 0, same.stderr
        assert same.stdout.startswith("reloaded: no pool changed"), same.stdout
        assert "farm reload --restart" in same.stdout and len(same.stdout.splitlines()) == 1
        up.config.write_text(up.config.read_text().replace("workers = 1", "workers = 2"))
        counted = farm_cli("reload", "--control", up.control)  # a change applied: as before
        assert counted.returncode == 0 and counted.stdout.strip() == "reloaded", counted.stdout
    finally:
        assert up.stop() == 0
