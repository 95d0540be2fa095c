"""Ctrl-Z (SIGTSTP) to `farm up`: the whole farm stops, as a foreground program does, and
`fg` or `bg` (SIGCONT) resumes it. The job server and the workers lead process groups of
their own, so the terminal's SIGTSTP reached the supervisor alone: they served on."""

from __future__ import annotations

import functools
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp
from tests.helpers.gate import Gate, second_worker_booting
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 2
"""


def farm_pids(up: FarmUp) -> list[int]:
    """The supervisor, its job server and its workers (as `farm ps` lists them): not any
    child of the moment (a boot check's)."""
    found = re.search(r"job server starting \(pid (\d+)\)", up.read_log())
    assert found is not None
    return [up.proc.pid, int(found[1]), *(r["pid"] for r in up.workers())]


def stopped(pids: list[int]) -> bool:
    return all(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in pids)


def running(pids: list[int]) -> bool:
    return not any(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in pids)


def test_ctrl_z_stops_the_whole_farm_and_fg_resumes_it(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, FUNCTIONS, own_group=True)  # a terminal's job (_orphaned)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2})
        farm = farm_pids(up)
        assert len(farm) == 4, farm  # farm up, the job server, two workers
        up.signal(signal.SIGTSTP)  # what the terminal sends its foreground job at Ctrl-Z
        wait_for("the whole farm stopped", functools.partial(stopped, farm))
        up.signal(signal.SIGCONT)  # fg, bg
        wait_for("the whole farm running again", functools.partial(running, farm))
        client = Client(up.addr)
        try:
            assert client.call("reverse", "abc", timeout=10) == b"cba"
        finally:
            client.close()
        log = up.read_log()
        assert "paused (SIGTSTP, Ctrl-Z)" in log and "resumed after" in log, log
        assert up.proc.poll() is None
    finally:
        up.signal(signal.SIGCONT)  # a stop left by a failed wait: SIGTERM waits on it
        assert up.stop() == 0


def test_a_farm_that_is_no_terminals_job_runs_on_at_sigtstp(tmp_path: Path) -> None:
    # Under systemd (or `setsid farm up`) no shell of its session could resume it, and the
    # kernel drops a default SIGTSTP there: stopping its server and workers would leave
    # them stopped for good.
    up = FarmUp(tmp_path, FUNCTIONS, start=False)
    up.new_session = True
    up.start()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2})
        up.signal(signal.SIGTSTP)
        wait_for("the SIGTSTP said", lambda: "SIGTSTP ignored" in up.read_log())
        client = Client(up.addr)
        try:
            assert client.call("reverse", "abc", timeout=10) == b"cba"
        finally:
            client.close()
        farm = farm_pids(up)
        assert running(farm)
    finally:
        assert up.stop() == 0


BOOT_TIMEOUT = 2
#: A job of CPU seconds, which a pause does not use up (a sleep's would pass in it).
SPIN = """
import time

from tests.helpers.calls import wait_gate

def spin(job):
    until = time.process_time() + float(job.data)
    while time.process_time() < until:
        pass
    return job.data

def gated(job):
    wait_gate(job.data.decode())  # the test opens it (tests.helpers.gate.Gate)
    return job.data
"""


def test_a_worker_booting_through_a_pause_is_not_judged_by_the_time_paused(
    tmp_path: Path,
) -> None:
    # The workers stand with the supervisor, but its clock went on: at `fg` a worker that
    # was loading its target had been "starting" for longer than boot_timeout, and was
    # killed as a failed boot, its slot backed off.
    up, gate = second_worker_booting(tmp_path, BOOT_TIMEOUT, own_group=True)
    try:
        farm = farm_pids(up)
        up.signal(signal.SIGTSTP)
        try:
            wait_for("the whole farm stopped", functools.partial(stopped, farm))
            time.sleep(BOOT_TIMEOUT + 0.5)  # the pause: longer than boot_timeout
        finally:
            up.signal(signal.SIGCONT)
        gate.touch()  # it loads its target now, in well under boot_timeout of its own time
        up.wait_idle({"gated": 2})
        assert "failed to boot" not in up.read_log(), up.read_log()
        assert [r["restarts"] for r in up.workers("gated")] == [0, 0]
    finally:
        assert up.stop() == 0


def test_a_drain_paused_keeps_its_grace_for_after_the_pause(tmp_path: Path) -> None:
    # Ctrl-Z during `farm stop`: the grace went on while the workers stood, and at `fg` a
    # worker in a job was killed as "did not drain in time", its job cut off.
    (tmp_path / "spin.py").write_text(SPIN)
    up = FarmUp(
        tmp_path, '[functions.gated]\ntarget = "spin:gated"\nworkers = 1\n', grace=3, own_group=True
    )
    gate = Gate(tmp_path / "gate.sock")
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"gated": 1})
        client = Client(up.addr)
        try:
            # In hand until the gate opens, after the pause: a job of so much CPU, which
            # had to end within the grace, came to need more of it on a loaded machine.
            task = client.submit("gated", gate.path)
            wait_for("the job in hand", lambda: any(r["job"] for r in up.workers("gated")))
            farm = farm_pids(up)
            up.signal(signal.SIGTERM)
            up.expect_status("stopping")
            up.signal(signal.SIGTSTP)
            try:
                wait_for("the whole farm stopped", functools.partial(stopped, farm))
                time.sleep(3.5)  # the pause: longer than the grace
            finally:
                up.signal(signal.SIGCONT)
            gate.open()
            assert client.wait(task, timeout=30) == gate.path.encode()  # drained, not cut off
        finally:
            client.close()
        assert up.proc.wait(30) == 0
        assert "did not drain in time" not in up.read_log(), up.read_log()
    finally:
        gate.open()
        up.stop()


def test_a_job_in_hand_through_a_pause_is_not_taken_for_a_lost_servers(tmp_path: Path) -> None:
    # The job server's start moved on by the pause made a job begun within the pause of
    # that start read as a dead server's in `farm ps` ("server gone": its answer goes
    # nowhere), which could have an operator kill a healthy worker or submit it again.
    (tmp_path / "spin.py").write_text(SPIN)
    up = FarmUp(tmp_path, '[functions.spin]\ntarget = "spin:spin"\nworkers = 1\n', own_group=True)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"spin": 1})
        client = Client(up.addr)
        try:
            task = client.submit("spin", b"3")
            wait_for("the job in hand", lambda: any(r["job"] for r in up.workers("spin")))
            farm = farm_pids(up)
            up.signal(signal.SIGTSTP)
            try:
                wait_for("the whole farm stopped", functools.partial(stopped, farm))
                time.sleep(2.5)  # the pause: longer than from the server's start to the job's
            finally:
                up.signal(signal.SIGCONT)
            wait_for("the resume", lambda: "resumed after" in up.read_log())
            [row] = up.workers("spin")
            assert row["job"] and not row["server_gone"], row
            assert client.wait(task, timeout=30) == b"3"
        finally:
            client.close()
    finally:
        up.signal(signal.SIGCONT)
        assert up.stop() == 0
