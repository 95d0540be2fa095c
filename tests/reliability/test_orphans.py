"""kill -9 of the supervisor leaves no worker behind, whatever the worker was doing.

A worker is started with its death signal (SIGKILL) already set and its parent
re-checked, before any of its own code runs (farm/pools/spawn.py): one that is
busy with a job that never ends, or one that was still starting, dies with the
supervisor. Its job, if it had one, goes back to the queue like any dead
worker's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT
from tests.helpers.farmproc import RECORD_PROC_OPENS, FarmUp, farm_cli
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

HOLDER = """
[functions.h]
target = "tests.helpers.crashy:hold"
workers = 1
"""

MANY = """
[functions.reverse]
target = "workers.text:reverse"
workers = 4
"""


def gone(pids: set[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_a_busy_worker_dies_with_its_supervisor(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, HOLDER)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"h": 1})
        subprocess.run(
            [sys.executable, "-m", "farm.cli", "submit", "h", str(tmp_path), "--background"],
            env={**os.environ, "GEARMAN_SERVERS": up.addr, "PYTHONPATH": str(ROOT)},
            check=True,
            timeout=30,
        )
        started = wait_for("the job to start", lambda: list(tmp_path.glob("started-*")))
        worker = int(started[0].name.split("-")[1])
        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait(10)
        # Its job would hold it for 20 s more; SIGTERM (drain) would have waited for it.
        wait_for("the busy worker to die", lambda: gone({worker}), timeout=10)
    finally:
        up.stop()


def test_workers_still_starting_die_with_their_supervisor(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, MANY)
    try:
        supervisor = psutil.Process(up.proc.pid)

        def workers() -> set[int]:
            found = set()
            for kid in supervisor.children(recursive=True):
                try:
                    if "workerproc" in " ".join(kid.cmdline()):
                        found.add(kid.pid)
                except psutil.Error:
                    continue  # gone between the listing and the look
            return found

        wait_for("a worker process", workers, timeout=30)
        seen = workers()
        up.proc.send_signal(signal.SIGKILL)  # while the others are still being started
        up.proc.wait(10)
        assert seen
        wait_for("every worker gone with the supervisor", lambda: gone(seen), timeout=10)
    finally:
        up.stop()


# A job that leaves a process behind in its worker's process group.
SPAWNER = """
import subprocess
from pathlib import Path

def run(job):
    child = subprocess.Popen(["sleep", "300"])
    Path(job.data.decode()).write_text(str(child.pid))
    return b"started"
"""


def test_what_a_job_started_goes_with_its_worker_when_it_drains(tmp_path: Path) -> None:
    # Killed with its worker when that crashed or was recycled, such a child outlived one
    # that drained (farm restart, a scale-down, a reload, farm stop): each deploy left one
    # more behind, orphaned.
    (tmp_path / "spawner.py").write_text(SPAWNER)
    up = FarmUp(tmp_path, '[functions.spawner]\ntarget = "spawner:run"\nworkers = 1\n')
    child = 0
    try:
        up.expect_notify("READY=1")
        (old,) = up.wait_idle({"spawner": 1})
        out = farm_cli("submit", "spawner", str(tmp_path / "child"), "--server", up.addr)
        assert out.stdout.strip() == "started", out
        child = int((tmp_path / "child").read_text())
        assert farm_cli("restart", "--control", up.control).returncode == 0
        wait_for("the old worker gone", lambda: gone({old["pid"]}))
        wait_for("what its job started gone with it", lambda: gone({child}))
    finally:
        assert up.stop() == 0
        if child and not gone({child}):  # without the fix it outlives the farm
            os.kill(child, signal.SIGKILL)


# A command that leaves a process of its own session behind, as a daemon's double fork
# does: the subshell that started it ends at once, so the supervisor adopts it.
DETACHER = """
( setsid sleep 300 & echo $! > "detached-$FARM_SLOT-$$" )
exec sleep 300
"""


def detached(tmp_path: Path, command_pid: int) -> int:
    found = wait_for(
        "its detached process", lambda: list(tmp_path.glob(f"detached-0-{command_pid}"))
    )
    pid = int(wait_for("its pid written", lambda: found[0].read_text().strip()))
    # $! is written as the child starts, maybe before it ran setsid(): until then it is in
    # the worker's group, which the slot's kill reached (gone, unlogged, on a loaded host).
    wait_for("its own session", lambda: _own_session(pid))
    return pid


def _own_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def adopted(pid: int, supervisor: int) -> bool:
    try:
        return psutil.Process(pid).ppid() == supervisor
    except psutil.Error:
        return False


def test_what_a_command_worker_detached_is_stopped_when_that_worker_ends(tmp_path: Path) -> None:
    # It left the worker's process group, so neither the slot's stop nor its kill reached
    # it, and each restart of the slot left one more running, for good.
    (tmp_path / "detacher.sh").write_text(DETACHER)
    up = FarmUp(
        tmp_path,
        f"""
        [functions.det]
        command = ["sh", "{tmp_path / "detacher.sh"}"]
        workers = 1
        graceful_timeout = 5
        """,
    )
    strays: list[int] = []
    try:
        wait_for("the supervisor", up.alive)
        first = wait_for("the command worker", lambda: up.workers("det"))[0]["pid"]
        strays.append(detached(tmp_path, first))
        wait_for("it adopted by the supervisor", lambda: adopted(strays[0], up.proc.pid))
        os.kill(first, signal.SIGKILL)  # a crash: the slot starts it again
        second = wait_for(
            "its successor",
            lambda: [w["pid"] for w in up.workers("det") if w["pid"] != first],
        )[0]
        wait_for("the first one's detached process gone", lambda: gone({strays[0]}))
        strays.append(detached(tmp_path, second))
        wait_for("the successor's adopted", lambda: adopted(strays[1], up.proc.pid))
        assert f"pid {strays[0]} detached from worker det#0 and outlived it" in up.read_log()
        assert up.stop() == 0
        assert gone({strays[1]}), "farm stop left the successor's detached process running"
        said = up.log_path.read_text()
        assert f"pid {strays[1]} detached from worker det#0 and outlived it" in said
    finally:
        up.stop()
        for pid in strays:
            if not gone({pid}):  # without the fix they outlive the farm
                os.kill(pid, signal.SIGKILL)


# A wrapper that does not exec its worker: the shell waits on it, so the worker is the
# shell's child, not the supervisor's, and no death signal of its own.
WRAPPER = """
"$FARM_TEST_PYTHON" -m farm worker workers.text:upper
echo "the worker ended: $?"
"""


def wrapper_farm(tmp: Path) -> FarmUp:
    """A farm whose command pool runs WRAPPER, and whose Python pool's job starts a child."""
    tmp.mkdir(exist_ok=True)
    (tmp / "runworker.sh").write_text(WRAPPER)
    (tmp / "spawner.py").write_text(SPAWNER)
    return FarmUp(
        tmp,
        f"""
        [functions.upper]
        command = ["sh", "{tmp / "runworker.sh"}"]
        workers = 1
        graceful_timeout = 3

        [functions.spawner]
        target = "spawner:run"
        workers = 1
        """,
        extra_env={"FARM_TEST_PYTHON": sys.executable},
        metrics=False,
    )


def wrapped_worker(up: FarmUp) -> tuple[int, int]:
    """The upper pool's shell, and the worker it started, once that serves."""
    up.expect_notify("READY=1", timeout=30)  # every slot serves: the wrapper's worker too
    (shell,) = [w["pid"] for w in up.workers("upper")]
    (worker,) = wait_for("the wrapper's worker", lambda: psutil.Process(shell).children())
    return shell, int(worker.pid)


def test_what_a_killed_supervisor_left_running_is_stopped_by_the_next_one(
    tmp_path: Path,
) -> None:
    # Only the supervisor's own children die of their death signal: a non-exec wrapper's
    # worker lived on, reparented to init, and served the next farm's server outside its
    # control (`upper 0 0 2` for a pool of one); a job's own child ran on for good.
    # b runs on; c is killed -9 too, but only a starts again: c's leftovers name a
    # supervisor that no longer runs as well, and only their control socket is not a's.
    up, other = wrapper_farm(tmp_path / "a"), wrapper_farm(tmp_path / "b")
    killed = wrapper_farm(tmp_path / "c")
    left: set[int] = set()
    theirs = 0
    try:
        (shell, worker), (_, others) = wrapped_worker(up), wrapped_worker(other)
        _, theirs = wrapped_worker(killed)
        rows = up.wait_idle({"spawner": 1}, timeout=30)
        (python_worker,) = [w["pid"] for w in rows if w["function"] == "spawner"]
        out = farm_cli("submit", "spawner", str(tmp_path / "child"), "--server", up.addr)
        assert out.stdout.strip() == "started", out
        left = {worker, int((tmp_path / "child").read_text())}
        up.proc.send_signal(signal.SIGKILL)
        killed.proc.send_signal(signal.SIGKILL)
        up.proc.wait(10)
        killed.proc.wait(10)
        wait_for("its own children gone", lambda: gone({shell, python_worker}), timeout=10)
        assert not gone(left), "both outlive their supervisor: the case at hand"
        assert not gone({theirs}), "c's wrapped worker outlives its supervisor too"

        up.messages.clear()  # the first run's READY=1 must not count
        up.start()
        wait_for("what the last supervisor left stopped", lambda: gone(left), timeout=20)
        said = up.read_log()
        assert f"pid {worker} (of worker upper#0) outlived the farm's last supervisor" in said
        # Another farm's workers are not this farm's to stop, though they carry the token.
        up.expect_notify("READY=1", timeout=30)
        assert not gone({others}), "the other farm's wrapped worker was stopped"
        assert [w["pid"] for w in other.workers("upper")] == [psutil.Process(others).ppid()]
        # Nor are a killed farm's: the scan that stopped a's leftovers (each said as it got
        # its stop, before READY=1) passed over c's, whose token names c's control socket.
        assert f"pid {theirs} (of worker" not in up.read_log()
        assert not gone({theirs}), "another killed farm's leftover was stopped"
    finally:
        up.stop()
        other.stop()
        killed.stop()
        for pid in left | {theirs} - {0}:
            if not gone({pid}):  # without the fix they outlive the farm
                os.kill(pid, signal.SIGKILL)


def test_a_farm_up_after_a_clean_stop_reads_no_other_process_environment(
    tmp_path: Path,
) -> None:
    # Each `farm up` looked through /proc for what a killed supervisor left running, which
    # reads the environment of each process of its user (as root, of its command pools'
    # users too), though after a clean stop (`farm stop`, SIGTERM) none can be left: only a
    # supervisor that did not stop cleanly leaves the record that has the next one look.
    bystander = subprocess.Popen(["sleep", "300"])  # the host's, not the farm's
    up = wrapper_farm(tmp_path)
    record = Path(f"{up.control}.supervisor")
    opened = tmp_path / "opened"
    try:
        wrapped_worker(up)
        up.signal(signal.SIGTERM)
        assert up.proc.wait(30) == 0

        up.code = RECORD_PROC_OPENS.format(path=str(opened)) + up.code
        up.messages.clear()  # the first run's READY=1 must not count
        up.start()
        wrapped_worker(up)  # READY=1: the look, had there been one, is over
        lines = opened.read_text().splitlines()
        environs = [line for line in lines if line.endswith("/environ")]
        assert f"/proc/{bystander.pid}/environ" not in environs, environs[:5]
        assert not environs, f"the supervisor read processes' environments: {environs[:5]}"
        assert record.stat().st_mode & 0o777 == 0o600  # what a kill -9 leaves
        up.signal(signal.SIGTERM)
        assert up.proc.wait(30) == 0
        assert not record.exists(), "a clean stop left its record"
    finally:
        bystander.kill()
        bystander.wait()
        up.stop()
