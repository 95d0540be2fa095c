"""farm.pools.leftbehind's rule, on real processes: a process is the farm's to stop only
where its FARM_INSTANCE names this farm's control socket under a supervisor that no
longer runs (its pid gone or another process's), in this pid namespace, and it names a
worker; every other one is left alone. And /proc is looked through only where the record
beside the control socket (farm.pools.lastrun) says the last supervisor did not stop
cleanly."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm.lifetime import process_stat
from farm.pools import leftbehind
from farm.pools.leftbehind import LeftBehind, find, instance_token
from tests.helpers import ROOT
from tests.helpers.waiting import wait_for

# A colon in the path: the token's last field. The pid: each xdist worker's own, so that a
# farm of a test in another worker, whose supervisor is as dead, does not stop this one's
# processes (a tmp_path's name is alike across workers: "not numbers" found its sleeper
# gone); kept in the environment, for the scripts these tests run to import alike.
CONTROL = os.environ.setdefault(
    "FARM_TEST_LEFT_CONTROL", f"/run/farm-test/control:sock.{os.getpid()}"
)


@pytest.fixture(autouse=True)
def whole_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each look through /proc given all the time it takes: on a loaded 2-core machine (CI
    beside other suites) the 1 s budget ran out before the newest pids, a test's sleeper
    among them (the rule here is what is found, not how fast)."""
    monkeypatch.setattr(leftbehind, "find", functools.partial(find, budget=60.0))


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
    pid = made[-1].pid
    # Popen returns as exec closes the child's descriptors, before the kernel has set up
    # its new environment: /proc/PID/environ read then is empty (75 of 2,000 starts on
    # a 2-core host), and a look right after found no leftover (two CI runs failed so).
    # deaf: its trap set, sleep runs, ignoring SIGTERM as the shell did.
    needle = f"FARM_INSTANCE={token}".encode()
    wait_for(
        "the sleep to run",
        lambda: needle in environ(pid) and (not deaf or comm(pid) == "sleep"),
    )
    return pid


def environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().split(b"\0")


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def ended_supervisor() -> tuple[int, int]:
    """A pid that ran and ended (reaped), and the start time it had."""
    proc = subprocess.Popen(["sleep", "60"])
    stat = process_stat(proc.pid)
    proc.kill()
    proc.wait()
    assert stat is not None
    return proc.pid, stat[1]


def test_only_the_processes_an_ended_supervisor_of_this_farm_left_are_found(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    space = leftbehind._namespaces()
    dead, start = ended_supervisor()
    live = process_stat(os.getpid())
    assert live is not None
    left = sleeper(sleepers, f"{space}:{dead}:{start}:{CONTROL}", "farm:p#3:7")
    reused = sleeper(sleepers, f"{space}:{os.getpid()}:{live[1] - 1}:{CONTROL}")
    running = sleeper(sleepers, instance_token(CONTROL))  # this process is its supervisor
    other_farm = sleeper(sleepers, f"{space}:{dead}:{start}:{CONTROL}.other")
    other_space = sleeper(sleepers, f"{space}1:{dead}:{start}:{CONTROL}")
    no_worker = sleeper(sleepers, f"{space}:{dead}:{start}:{CONTROL}", worker="")
    found = {f.pid: f for f in leftbehind.find(CONTROL, {os.geteuid()})}
    assert set(found) == {left, reused}, {
        "running": running,
        "other_farm": other_farm,
        "other_space": other_space,
        "no_worker": no_worker,
    }
    assert (found[left].worker, found[left].supervisor) == ("p#3", dead)
    # Another user's processes are never looked at.
    assert not leftbehind.find(CONTROL, {os.geteuid() + 1})


class Farm(LeftBehind):
    """What LeftBehind reads of a Supervisor: its config's control socket, the farm's grace
    (no pool of the workers' name: SIGTERM, then SIGKILL past it), whether it stops; its
    record at ``record`` (CONTROL's directory is not there)."""

    def __init__(self, grace: float, record: Path, control: str = CONTROL) -> None:
        supervisor = SimpleNamespace(control=control, graceful_timeout=grace)
        self.config = SimpleNamespace(supervisor=supervisor, functions={})  # type: ignore[assignment]
        self.stopping, self.grace = False, grace
        self.record, self.control = str(record), None

    def run_record(self) -> str:
        return self.record


def killed_farm(record: Path, dead: int, start: int, control: str = CONTROL) -> str:
    """The token of an ended supervisor of the farm at ``control``, which left its record
    at ``record``: it did not stop cleanly."""
    token = f"{leftbehind._namespaces()}:{dead}:{start}:{control}"
    record.write_text(token + "\n")
    return token


def test_each_gets_the_stop_signal_then_sigkill_past_the_grace(
    sleepers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    dead, start = ended_supervisor()
    token = killed_farm(tmp_path / "record", dead, start)
    sleeper(sleepers, token)
    sleeper(sleepers, token, deaf=True)
    polite, deaf = sleepers
    farm = Farm(grace=0.5, record=tmp_path / "record")
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


def test_sigquit_at_a_stop_kills_them_at_once(
    sleepers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    dead, start = ended_supervisor()
    sleeper(sleepers, killed_farm(tmp_path / "record", dead, start), deaf=True)
    farm = Farm(grace=60, record=tmp_path / "record")
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
from pathlib import Path
from farm.lifetime import process_stat
from tests.unit.test_left_behind import Farm
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # a stop to it stays pending
deadline = time.monotonic() + 10
while process_stat(os.getpgrp()) is not None and time.monotonic() < deadline:
    time.sleep(0.01)  # until the group's leader is gone, as the killed worker is
farm = Farm(grace=0.5, record=Path(os.environ["LEFT_RECORD"]))
farm.stop_left_behind()
found = sorted(farm.left_behind)
until = max(farm.left_behind_deadlines())
farm.tend_left_behind(until)  # past the grace: SIGKILL
pending = signal.SIGTERM in signal.sigpending()
print(json.dumps({"found": found, "stopped": pending, "pgid": os.getpgrp()}), flush=True)
"""


def test_a_group_holding_the_new_supervisor_or_one_without_the_token_is_not_stopped_whole(
    tmp_path: Path,
) -> None:
    dead, start = ended_supervisor()
    token = killed_farm(tmp_path / "record", dead, start)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEFT_RECORD": str(tmp_path / "record")}
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
        while (state := process_stat(pids["left"])) is not None and state[0] != "Z":
            assert time.monotonic() < deadline, "the leftover was not killed"
            time.sleep(0.01)
        cleared = process_stat(pids["cleared"])
        assert cleared is not None and cleared[0] != "Z", "a process without the token was stopped"
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The scanner and the shell that runs it carry the token too, and on a loaded
        # machine outlived this test: the next one's farm found them as leftovers of its
        # own (CI, "too many values to unpack"). The whole group goes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)


def test_after_a_clean_stop_no_process_is_looked_at(
    sleepers: list[subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The look read the environment of every process of the farm's user (as root, of its
    # command pools' users too) at each start, though a clean stop leaves nothing behind.
    read: list[int] = []
    environ = leftbehind._environ
    monkeypatch.setattr(leftbehind, "_environ", lambda pid: read.append(pid) or environ(pid))
    record, control = tmp_path / "record", f"{CONTROL}.{tmp_path.name}"  # no other test's
    dead, start = ended_supervisor()
    left = sleeper(sleepers, killed_farm(record, dead, start, control))
    record.unlink()  # it stopped cleanly, though its token is still carried here
    farm = Farm(grace=0.5, record=record, control=control)
    farm.stop_left_behind()
    assert not read and not farm.left_behind, "looked through /proc after a clean stop"
    assert record.read_text() == instance_token(control) + "\n"
    assert record.stat().st_mode & 0o777 == 0o600
    farm.close_control()  # its clean stop
    assert not record.exists()
    killed_farm(record, dead, start, control)  # another supervisor's: kept
    farm.close_control()
    assert record.exists(), "another supervisor's record was removed"
    # Killed -9 (its record left): the next start looks, and writes its own record.
    farm.stop_left_behind()
    assert set(farm.left_behind) == {left} and left in read
    assert record.read_text() == instance_token(control) + "\n"


def seen_as(pid: int, token: str, control: str, dead: int) -> dict[str, object]:
    """What the look sees of ``pid`` now, for a failure's message: two clean-clone CI runs
    found nothing left (a 2-core host under an xdist run) where no local run fails."""
    env = leftbehind._environ(pid)
    return {
        "stat": process_stat(pid),
        "token": env.get(b"FARM_INSTANCE"),
        "expected": token,
        "worker": env.get(b"FARM_WORKER_ID"),
        "supervisor gone": leftbehind._supervisor_gone(token, control, leftbehind._namespaces()),
        "dead's stat now": process_stat(dead),
        "found now": [left.pid for left in leftbehind.find(control, {os.geteuid()})],
    }


@pytest.mark.parametrize(
    "what", ["cut off", "another farm's", "not numbers", "a link", "a FIFO", "a directory"]
)
def test_a_record_that_does_not_read_is_said_then_looked_through(
    sleepers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    what: str,
) -> None:
    record, target = tmp_path / "record", tmp_path / "target"
    control = f"{CONTROL}.{tmp_path.name}"  # what another test's processes name is not found
    dead, start = ended_supervisor()
    token = killed_farm(target, dead, start, control)
    if what == "cut off":
        record.write_text(token)  # no newline: the write did not end
    elif what == "another farm's":
        record.write_text(f"{leftbehind._namespaces()}:{dead}:{start}:/elsewhere\n")
    elif what == "not numbers":
        record.write_text(f"{leftbehind._namespaces()}:x:{start}:{control}\n")
    elif what == "a link":
        record.symlink_to(target)  # followed, it names a killed supervisor: not believed
    elif what == "a FIFO":
        os.mkfifo(record)  # its open must not hang the start
    else:
        record.mkdir()
    left = sleeper(sleepers, token)
    farm = Farm(grace=0.5, record=record, control=control)
    farm.stop_left_behind()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(str(record))]
    assert len(said) == 1 and "looking for what the last supervisor left" in said[0], said
    assert set(farm.left_behind) == {left}, seen_as(left, token, control, dead)
    assert target.read_text() == token + "\n", "what the link named was changed"
    if what != "a directory":  # removed, and this supervisor's record in its place
        assert record.read_text() == instance_token(control) + "\n"


def test_a_record_of_a_running_supervisor_is_no_reason_to_look(
    sleepers: list[subprocess.Popen[bytes]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its control socket was removed under it, and another `farm up` took the path: its
    # workers' tokens name a supervisor that runs, which no look would find.
    running = subprocess.Popen(["sleep", "60"])
    sleepers.append(running)
    stat = process_stat(running.pid)
    assert stat is not None
    record, control = tmp_path / "record", f"{CONTROL}.{tmp_path.name}"
    token = killed_farm(record, running.pid, stat[1], control)
    sleeper(sleepers, token)
    farm = Farm(grace=0.5, record=record, control=control)
    farm.stop_left_behind()
    assert not farm.left_behind
    assert f"supervisor {running.pid} of this farm runs, without its control socket" in caplog.text
    record.write_text(token + "\n")  # the other one's again: this one's clean stop keeps it
    farm.close_control()
    assert record.read_text() == token + "\n"


def test_a_leftover_that_left_its_group_is_signalled_alone(
    sleepers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # A security review: a leftover (a pool's `user =` may make one) took its group's stop,
    # ignored it, left the group (setpgid), and the freed group id went to a root daemon's
    # new session; at the grace's end the supervisor's SIGKILL went to that group. Modelled
    # here: the group it was found in is now another process's (a session leader with no
    # token), and the SIGKILL must go to the leftover alone.
    dead, start = ended_supervisor()
    sleeper(sleepers, killed_farm(tmp_path / "record", dead, start), deaf=True)
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    sleepers.append(victim)
    left = sleepers[0]
    farm = Farm(grace=60, record=tmp_path / "record")
    farm.stop_left_behind()
    assert farm.left_behind[left.pid].group == left.pid  # found leading its group
    farm.left_behind[left.pid].group = victim.pid  # "its" group id is another's now
    (deadline,) = farm.left_behind_deadlines()
    farm.tend_left_behind(deadline)
    assert left.wait(10) == -signal.SIGKILL
    assert victim.poll() is None, "the group it no longer is in was never signalled"
