"""A Ctrl-C (SIGINT to the caller) at the moments where the caller's own thread does the
executor's work, against a real `farm up`: the executor keeps working, as
ProcessPoolExecutor does (docs/executor.md, Ctrl-C).

Each case runs in a process of its own, which sends itself SIGINT from a profile hook at
the exact moment under test, so the race is met every time, not by chance."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp

FUNCTIONS = """
[functions."farm.python"]
target = "farm.executor.call:run_call"
workers = 1
"""

CALLER = """
import signal, sys, threading, time
import farm

mode, servers, key = sys.argv[1:4]


def own(signum, frame):
    raise KeyboardInterrupt("the program's own handler")


if mode == "own":  # a SIGINT handler of the program's own: nothing holds its Ctrl-C
    signal.signal(signal.SIGINT, own)
ex = farm.Executor(2, servers=servers, key_file=key)


def until(done):
    deadline = time.monotonic() + 10
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def pumps():
    return sum(t.name == "farm-executor" for t in threading.enumerate())


if mode not in ("start", "own"):
    assert ex.submit(abs, -1).result(timeout=30) == 1  # the pump runs
shots = []
# Where the shot lands: whole() entered by the caller's thread doing the pump's work, or
# (queued: nudge) a function nudge calls before that work, with the call queued already.
CALLERS = {"submit": "nudge", "result": "_wait_reading"}
QUEUED = {"queued_guard": "__init__", "queued_reading": "reading_here"}
QUEUED["queued_map"] = "reading_here"


def hook(frame, event, arg):
    if shots or event != "call":
        return
    if mode in ("start", "own"):  # the pump thread's first call: its starter waits for it
        hit = threading.current_thread().name == "farm-executor"
    elif mode in QUEUED:
        hit = frame.f_code.co_name == QUEUED[mode] and frame.f_back.f_code.co_name == "nudge"
        # queued_map: the nudge after map queued its calls (Executor._nudge), not put's
        hit = hit and (mode != "queued_map" or frame.f_back.f_back.f_code.co_name == "_nudge")
    else:
        hit = (
            frame.f_code.co_name == "__enter__"
            and frame.f_globals.get("__name__") == "farm.executor.interrupts"
            and frame.f_back.f_code.co_name == CALLERS[mode]
        )
    if hit:
        shots.append(1)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


# result: the caller's thread reads its reply itself only if the reply is not in yet as
# it looks (else the pump thread read it), so it tries again until the shot lands.
for _ in range(200 if mode == "result" else 1):
    # Asleep in select: the caller's thread does its work.
    assert mode in ("start", "own") or until(lambda: ex._pump._sleeping)
    (threading.setprofile if mode in ("start", "own") else sys.setprofile)(hook)
    try:
        if mode == "result":
            ex.submit(pow, 2, 5).result(timeout=30)
        elif mode == "queued_map":
            ex.map(abs, [-2])
        else:
            ex.submit(abs, -2)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        threading.setprofile(None)
        sys.setprofile(None)
    if shots:
        break
print("shots", len(shots))
if mode in QUEUED:  # the interrupted submit's call is sent with no later submit to nudge
    until(lambda: not ex._pump._pending)
    print("queued", len(ex._pump._pending))
print("result", ex.submit(abs, -3).result(timeout=30))
until(lambda: pumps() == 1)
print("pumps", pumps())
ex.shutdown()
"""


@pytest.fixture(scope="module")
def farm_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FarmUp, Path]]:
    tmp = tmp_path_factory.mktemp("interrupts")
    key = tmp / "state" / "executor.key"
    up = FarmUp(tmp, FUNCTIONS, extra_env={"FARM_KEY_FILE": str(key)}, metrics=False)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"farm.python": 1})
        yield up, key
    finally:
        assert up.stop() == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "mode", ["start", "own", "submit", "result", "queued_guard", "queued_reading", "queued_map"]
)
def test_a_ctrl_c_where_the_caller_does_the_pump_s_work_leaves_the_executor_working(
    farm_up: tuple[FarmUp, Path], tmp_path: Path, mode: str
) -> None:
    # start: a Ctrl-C while the first submit waited for the pump thread to start made
    # Thread.start() raise after the thread had started; the next submit started a second
    # thread on the same pump, and at shutdown one closed the sockets the other was using
    # ("farm executor pump failed", OSError: Bad file descriptor).
    # submit, result: a Ctrl-C pending as the caller's thread entered the section that
    # holds it back (whole()) was raised there, before any work began, and was taken for
    # work left half done: the executor broke (BrokenFarmExecutor, for every later call).
    # own: as start, with a SIGINT handler of the program's own, which nothing holds back:
    # the executor took the thread for not started, and the next submit started a second.
    # queued_*: a Ctrl-C in nudge before its work (at its guard's making, or as it asked
    # whether this thread reads replies) left the call queued and the sleeping pump unwoken;
    # queued_map: so did one in the nudge after a map queued its calls.
    up, key = farm_up
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    done = subprocess.run(
        [sys.executable, str(script), mode, f"unix:{up.unix}", str(key)],
        capture_output=True,
        text=True,
        timeout=90,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    out = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    queued = ["queued 0"] if mode.startswith("queued") else []
    assert out == ["interrupted", "shots 1", *queued, "result 3", "pumps 1"], done.stderr
    assert "pump failed" not in done.stderr, done.stderr
