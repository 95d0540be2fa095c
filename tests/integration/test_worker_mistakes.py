"""A worker author's mistakes, each said in one line that names their code: ``sys.exit()``
in a job (it ended the worker, with no line of its own, and the job ran job_retries times),
a result that is not data (a traceback of farm's frames alone, "raised" of a function that
raised nothing), and ``os._exit()`` (the supervisor's line named no function nor target).
The program's own SIGTERM handler, whatever its shape, and a Ctrl-C still end a program
built on farm.Worker."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp
from tests.helpers.plainworker import HANDLERS
from tests.helpers.waiting import wait_for

MISTAKES = """
import os, sys

def bye(job):
    sys.exit(3)

def rdict(job):
    return {"a": 1}

def hard(job):
    os._exit(7)

def ok(job):
    return b"ok"
"""

POOLS = """
[functions.bye]
target = "mistakes:bye"
workers = 1

[functions.rdict]
target = "mistakes:rdict"
workers = 1

[functions.hard]
target = "mistakes:hard"
functions = ["hard", "harder"]
workers = 1
"""


@pytest.fixture
def up(tmp_path: Path):
    (tmp_path / "mistakes.py").write_text(MISTAKES)
    farm_up = FarmUp(tmp_path, POOLS, metrics=False, job_retries=2)
    try:
        farm_up.expect_notify("READY=1")
        farm_up.wait_idle({"bye": 1, "rdict": 1, "hard": 1})
        yield farm_up
    finally:
        assert farm_up.stop() == 0


def _logged(up: FarmUp, pattern: str) -> list[str]:
    """What ``pattern`` finds in the farm's log, once it finds something: the worker's line
    reaches it through its pipe and the supervisor, after the caller has its answer."""
    return wait_for(f"{pattern!r} in the log", lambda: re.findall(pattern, up.read_log()))


def test_sys_exit_in_a_job_fails_that_job_in_one_line_and_the_worker_serves_on(up) -> None:
    # sys.exit(3) went through the worker's `except Exception`: the worker died with no
    # line of its own, the job ran three times (three dead workers), and the supervisor's
    # "crashed in job H:...: exited with code 3" named no code.
    pid = up.workers("bye")[0]["pid"]
    with farm.Client(up.addr) as client:
        for _ in range(2):
            with pytest.raises(farm.JobException) as failed:
                client.call("bye", b"", timeout=30)
            assert str(failed.value) == "SystemExit: 3"  # as any exception is sent
    assert [w["pid"] for w in up.workers("bye")] == [pid]
    said = _logged(up, r"WARNING job bye H:\S+ (.*)")
    log = up.read_log()
    where = f"{up.tmp / 'mistakes.py'}:5 in bye"
    assert said == [f"raised SystemExit(3) at {where}: the job fails, the worker goes on"], log
    assert "crashed" not in log and "poison" not in log


def test_a_result_that_is_not_data_is_one_line_naming_the_function_and_target(up) -> None:
    # It was "job rdict H raised" with a traceback through farm/worker.py and
    # farm/protocol/checks.py alone, of a function that raised nothing.
    said = "rdict (mistakes:rdict) returned dict; return bytes, str or None"
    with farm.Client(up.addr) as client, pytest.raises(farm.JobException) as failed:
        client.call("rdict", b"", timeout=30)
    assert str(failed.value) == f"TypeError: {said}"  # the caller's text, the log's line
    logged = _logged(up, r"WARNING job rdict H:\S+ (.*)")
    log = up.read_log()
    assert logged == [f"failed: {said}"], log
    assert "Traceback" not in log and "farm/worker.py" not in log


def test_os_exit_in_a_job_is_logged_by_the_supervisor_naming_function_and_target(up) -> None:
    # os._exit() cannot be caught: the supervisor's line is the only one, and it said
    # "worker hard#0 ... crashed in job H:...: exited with code 7". Its pool serves two
    # functions: the job was one of them (the record of the job in hand holds no name).
    with farm.Client(up.addr) as client, pytest.raises(farm.JobFailed):
        client.call("hard", b"", timeout=30)
    lines = wait_for(
        "the supervisor's lines", lambda: re.findall(r"crashed in job .*", up.read_log())
    )
    assert re.fullmatch(
        r"crashed in job H:\S+ of hard or harder \(mistakes:hard\): exited with code 7;"
        r" restarting now",
        lines[0],
    ), lines


@pytest.mark.parametrize("server", ["farm", "gearmand"])
def test_farm_worker_serves_on_after_a_job_calls_sys_exit(server: str, request) -> None:
    # The same worker class outside farm up: `farm worker`, against either server.
    srv = request.getfixturevalue("farm_server" if server == "farm" else "gearmand")
    cmd = [sys.executable, "-c", "from farm.cli import main; main()", "worker"]
    proc = subprocess.Popen([*cmd, "tests.helpers.crashy:leave", "--server", srv.addr], cwd=ROOT)
    try:
        with farm.Client(srv.addr) as client:
            for code in (3, 0):
                # farm's server: WORK_EXCEPTION's text; gearmand: WORK_FAIL (docs/client.md)
                failure = farm.JobException if server == "farm" else farm.JobFailed
                with pytest.raises(failure) as failed:
                    client.call("leave", str(code), timeout=30)
                if server == "farm":
                    assert str(failed.value) == f"SystemExit: {code}"
                assert proc.poll() is None, "the worker lives on"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize(
    ("how", "sig", "status"),
    [
        *((how, signal.SIGTERM, 0) for how in HANDLERS),  # each shape of handler a program has
        ("stop", signal.SIGINT, -signal.SIGINT),  # as Python ends
    ],
)
def test_a_programs_own_sigterm_exit_and_a_ctrl_c_still_end_it_mid_job(
    farm_server, tmp_path: Path, how: str, sig: int, status: int
) -> None:
    # A SystemExit its own SIGTERM handler raises, and the KeyboardInterrupt of Python's own
    # SIGINT handler, land in the job's frame: they end the program, as before, and do
    # not fail the job. A handler that is a partial or an object, or that put SIG_DFL back
    # before it exited, was not known for one (only a function still installed was): the
    # job failed and the worker ignored its stop.
    cmd = [sys.executable, "-m", "tests.helpers.plainworker", farm_server.addr, how]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with farm.Client(farm_server.addr) as client:
            client.submit("hold", str(tmp_path), background=True)
            wait_for("the job running", lambda: (tmp_path / f"started-{proc.pid}").exists())
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == status, err
        assert "the job fails" not in err
        if sig == signal.SIGINT:
            assert err.rstrip().endswith("KeyboardInterrupt"), err
    finally:
        proc.kill()
        proc.wait(10)


def test_a_jobs_own_sys_exit_fails_it_where_the_program_exits_on_sigterm(
    farm_server, tmp_path: Path
) -> None:
    # The program's SIGTERM handler ends it; the job's own sys.exit(3), in the same worker,
    # fails just that job: the handler is not what raised it.
    cmd = [sys.executable, "-m", "tests.helpers.plainworker", farm_server.addr, "reset"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with farm.Client(farm_server.addr) as client:
            with pytest.raises(farm.JobException) as failed:
                client.call("leave", b"3", timeout=30)
            assert str(failed.value) == "SystemExit: 3"
            assert proc.poll() is None, "the worker lives on"
            client.submit("hold", str(tmp_path), background=True)  # and still ends on SIGTERM
            wait_for("the job running", lambda: (tmp_path / f"started-{proc.pid}").exists())
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert re.findall(r"job (\S+) H:\S+ raised SystemExit", err) == ["leave"], err
    finally:
        proc.kill()
        proc.wait(10)
