"""farm.pools.leftbehind's rule, on real processes: a process is the farm's to stop only
where its FARM_INSTANCE names this farm's control socket under a supervisor that no
longer runs (its pid gone or another process's), in this pid namespace, and it names a
worker; every other one is left alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from farm.pools import leftbehind
from farm.pools.leftbehind import LeftBehind, find, instance_token
from tests.helpers import ROOT

CONTROL = "/run/farm-test/control:sock"  # a colon in the path: the token's last field


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for proc in made:
        proc.kill()
        proc.wait()


def sleeper(
    made: list[subprocess.Popen[bytes]],
    token: str,
    worker: str = "farm:p#0:0",
    *,
    deaf: bool = False,
) -> int:
    """A sleep carrying ``token``; leading a group of its own, so that a stop sent to its
    group never reaches pytest's. ``deaf``: it ignores SIGTERM."""
    env = {**os.environ, "FARM_INSTANCE": token}
    env.pop("FARM_WORKER_ID", None)
    if worker:
        env["FARM_WORKER_ID"] = worker
    argv = ["sh", "-c", "trap '' TERM; exec sleep 60"] if deaf else ["sleep", "60"]
    made.append(subprocess.Popen(argv, env=env, start_new_session=True))
    if deaf:  # its trap set: sleep runs, ignoring SIGTERM as the shell did
        deadline = time.monotonic() + 10
        while comm(made[-1].pid) != "sleep":
            assert time.monotonic() < deadline, "the sleep never ran"
            time.sleep(0.01)
    return made[-1].pid


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def ended_supervisor() -> tuple[int, int]:
    """A pid that ran and ended (reaped), and the start time it had."""
    proc = subprocess.Popen(["sleep", "60"])
    stat = leftbehind._stat(proc.pid)
    proc.kill()
    proc.wait()
    assert stat is not None
    return proc.pid, stat[1]


def test_only_the_processes_an_ended_supervisor_of_this_farm_left_are_found(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    space = leftbehind._namespaces()
    dead, start = ended_supervisor()
    live = leftbehind._stat(os.getpid())
    assert live is not None
    left = sleeper(sleepers, f"{space}:{dead}:{start}:{CONTROL}", "farm:p#3:7")
    reused = sleeper(sleepers, f"{space}:{os.getpid()}:{live[1] - 1}:{CONTROL}")
    running = sleeper(sleepers, instance_token(CONTROL))  # this process is its supervisor
    other_farm = sleeper(sleepers, f"{space}:{dead}:{start}:{CONTROL}.other")
    other_space = sleeper(sleepers, f"{space}1:{dead}:{start}:{CONTROL}")
    no_worker = sleeper(sleepers, f"{space}:{dead}:{start}:{CONTROL}", worker="")
    found = {f.pid: f for f in find(CONTROL, {os.geteuid()})}
    assert set(found) == {left, reused}, {
        "running": running,
        "other_farm": other_farm,
        "other_space": other_space,
        "no_worker": no_worker,
    }
    assert (found[left].worker, found[left].supervisor) == ("p#3", dead)
    # Another user's processes are never looked at.
    assert not find(CONTROL, {os.geteuid() + 1})


class Farm(LeftBehind):
    """What LeftBehind reads of a Supervisor: its config's control socket, the farm's grace
    (no pool of the workers' name: SIGTERM, then SIGKILL past it), whether it stops."""

    def __init__(self, grace: float) -> None:
        supervisor = SimpleNamespace(control=CONTROL, graceful_timeout=grace)
        self.config = SimpleNamespace(supervisor=supervisor, functions={})  # type: ignore[assignment]
        self.stopping, self.grace = False, grace


def test_each_gets_the_stop_signal_then_sigkill_past_the_grace(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    dead, start = ended_supervisor()
    token = f"{leftbehind._namespaces()}:{dead}:{start}:{CONTROL}"
    sleeper(sleepers, token)
    sleeper(sleepers, token, deaf=True)
    polite, deaf = sleepers
    farm = Farm(grace=0.5)
    farm.stop_left_behind()
    assert set(farm.left_behind) == {polite.pid, deaf.pid}
    assert polite.wait(10) == -signal.SIGTERM
    farm.tend_left_behind(time.monotonic())
    assert set(farm.left_behind) == {deaf.pid}, "the ended one is let go"
    assert deaf.poll() is None, "SIGTERM is ignored: it gets the grace"
    (deadline,) = farm.left_behind_deadlines()
    farm.tend_left_behind(deadline)
    assert deaf.wait(10) == -signal.SIGKILL
    assert not farm.left_behind


def test_sigquit_at_a_stop_kills_them_at_once(sleepers: list[subprocess.Popen[bytes]]) -> None:
    dead, start = ended_supervisor()
    sleeper(sleepers, f"{leftbehind._namespaces()}:{dead}:{start}:{CONTROL}", deaf=True)
    farm = Farm(grace=60)
    farm.stop_left_behind()
    farm.stopping, farm.grace = True, 0.0  # what SIGQUIT sets (farm.pools.signals)
    farm.tend_left_behind(time.monotonic())
    assert sleepers[0].wait(10) == -signal.SIGKILL


# A job of the killed farm's worker ran `farm up` again: the new supervisor is in the group
# of that worker (its leader gone), beside the job's other child, carrying the token, and a
# process whose environment was cleared is there too. Each runs from the leader's fork.
LEADER = """
import json, os, subprocess, sys
token, scanner = sys.argv[1], sys.argv[2]
env = {**os.environ, "FARM_INSTANCE": token, "FARM_WORKER_ID": "farm:p#0:1"}
deaf = ["sh", "-c", "trap '' TERM; exec sleep 60"]
left = subprocess.Popen(deaf, env=env, stdout=subprocess.DEVNULL)
cleared = subprocess.Popen(["sleep", "60"], env={}, stdout=subprocess.DEVNULL)
print(json.dumps({"left": left.pid, "cleared": cleared.pid}), flush=True)
# The job's shell runs it (not exec'd: `; true`), and waits on it.
subprocess.Popen(["sh", "-c", '"$0" -c "$1"; true', sys.executable, scanner], env=env)
"""

SCANNER = """
import json, os, signal, time
from farm.pools import leftbehind
from tests.unit.test_left_behind import Farm
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # a stop to it stays pending
deadline = time.monotonic() + 10
while leftbehind._stat(os.getpgrp()) is not None and time.monotonic() < deadline:
    time.sleep(0.01)  # until the group's leader is gone, as the killed worker is
farm = Farm(grace=0.5)
farm.stop_left_behind()
found = sorted(farm.left_behind)
until = max(farm.left_behind_deadlines())
farm.tend_left_behind(until)  # past the grace: SIGKILL
pending = signal.SIGTERM in signal.sigpending()
print(json.dumps({"found": found, "stopped": pending, "pgid": os.getpgrp()}), flush=True)
"""


def test_a_group_holding_the_new_supervisor_or_one_without_the_token_is_not_stopped_whole() -> None:
    dead, start = ended_supervisor()
    token = f"{leftbehind._namespaces()}:{dead}:{start}:{CONTROL}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER, token, SCANNER],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    pids = json.loads(leader.stdout.readline())
    try:
        leader.wait(10)
        line = leader.stdout.readline()  # the scanner's, on the pipe it inherited
        assert line, "the new supervisor was killed by its own SIGKILL to its process group"
        said = json.loads(line)
        assert said["pgid"] == leader.pid
        # Neither the scanner (this `farm up`) nor the shell that runs it is one to stop,
        # though both carry the token.
        assert said["found"] == [pids["left"]]
        assert not said["stopped"], "the new supervisor stopped its own process group"
        # The leftover alone got the stop, then SIGKILL past its grace; the cleared one
        # and the scanner itself (which printed after the SIGKILL) live on.
        deadline = time.monotonic() + 10
        while (state := leftbehind._stat(pids["left"])) is not None and state[0] != "Z":
            assert time.monotonic() < deadline, "the leftover was not killed"
            time.sleep(0.01)
        cleared = leftbehind._stat(pids["cleared"])
        assert cleared is not None and cleared[0] != "Z", "a process without the token was stopped"
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
