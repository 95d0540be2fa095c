"""What a command worker's stop says of the job it held: cut off only when it was, and
named wherever it was (the journal, the worker's exit line, `farm stop`'s output;
docs/operations.md, "Scaling" and "Stop"); SIGQUIT's stop said as one at once, and not
held up by a hung job server.

The workers are Python `farm.Worker`s run as commands, deaf to SIGTERM in their job (as a
PHP worker with pcntl_signal(SIGTERM, SIG_IGN) is), each job held at a gate the test opens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

# argv: the gate's socket (tests.helpers.gate; inlined: a command does not import tests).
DEAF_WORKER = """\
import os, signal, socket, sys
import farm

worker = farm.Worker(os.environ["FARM_SERVERS"])

@worker.function("slow")
def slow(job):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(sys.argv[1])
            sock.recv(1)  # until the test opens the gate
        except OSError:
            pass
    return b"done"

worker.work()
"""


def deaf_farm(tmp_path: Path, grace: int, *, wrapped: bool = False, deaf: bool = True) -> FarmUp:
    """A farm of one DEAF_WORKER (``deaf=False``: one that dies of SIGTERM in its job too)."""
    script = tmp_path / "deaf.py"
    script.write_text(DEAF_WORKER if deaf else DEAF_WORKER.replace("SIG_IGN", "SIG_DFL"))
    argv = [sys.executable, str(script), str(tmp_path / "gate")]
    if wrapped:  # `sh -c "php w.php; ..."`: the shell dies of SIGTERM, its worker drains on
        argv = ["sh", "-c", " ".join(argv) + "; echo wrapper-done"]
    pool = f"[functions.slow]\ncommand = {json.dumps(argv)}\nworkers = 1\n"
    return FarmUp(tmp_path, pool + f"graceful_timeout = {grace}\n", metrics=False)


def stopped_holding_a_job(up: FarmUp, tmp_path: Path) -> tuple[dict[str, Any], Any, Any]:
    """`farm stop` while the farm's one worker holds a job at its gate: (its `farm ps` row,
    the job's task, `farm stop`'s result), once `farm up` exited 0."""
    up.expect_notify("READY=1")
    (row,) = wait_for("a worker serving", lambda: up.workers("slow", "running"))
    with Gate(tmp_path / "gate") as gate, Client(up.addr) as client:
        task = client.submit("slow", "x", background=True)
        gate.arrived(1)
        out = farm_cli("stop", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        assert up.proc.wait(20) == 0
    return row, task, out


def log_line(up: FarmUp, part: str) -> str:
    return wait_for(part, lambda: next((r for r in up.read_log().splitlines() if part in r), None))


@pytest.mark.parametrize("ends", ["finishes", "held"])
def test_a_wrappers_worker_deaf_to_the_stop_signal_is_said_cut_off_only_if_it_was(
    tmp_path: Path, ends: str
) -> None:
    # The shell died of the stop signal past the grace, and its exit line said "(did not
    # drain in time; its job H:... is cut off)" while the worker it started finished the
    # job (the client got its result); the SIGKILL to what was left then named no job,
    # though that one did cut it off.
    up = deaf_farm(tmp_path, grace=2, wrapped=True)
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("the wrapper serving", lambda: up.workers("slow", "running"))
        with Gate(tmp_path / "gate") as gate, Client(up.addr, timeout=30) as client:
            task = client.submit("slow", "x")
            gate.arrived(1)
            assert farm_cli("scale", "slow=0", "--control", up.control).returncode == 0
            log_line(up, f"{task.handle} still runs after the 2s grace; SIGTERM")
            end = log_line(up, f"(pid {row['pid']}) was killed by SIGTERM")
            if ends == "finishes":
                gate.open()
                assert client.wait(task, timeout=10) == b"done"
            kill = log_line(up, "SIGKILL to its process group")
        assert end.endswith("was killed by SIGTERM after draining"), end
        if ends == "finishes":
            assert kill.endswith("SIGKILL to its process group"), kill
        else:
            assert re.search(
                rf"SIGKILL to its process group; its job {re.escape(task.handle)}"
                rf" \(running [\d.]+s\) is cut off$",
                kill,
            ), kill
    finally:
        assert up.stop() == 0


def test_a_command_worker_ignoring_its_stop_signal_is_killed_naming_its_job(
    tmp_path: Path,
) -> None:
    # Its stop signal past the grace named the job, and the SIGKILL a grace later said only
    # "did not drain in time", in the journal, its exit line and `farm stop`: the job's name
    # was lost where the job was cut off.
    up = deaf_farm(tmp_path, grace=1)
    try:
        row, task, out = stopped_holding_a_job(up, tmp_path)
        cut = rf"did not drain in time; its job {re.escape(task.handle)} \(running [\d.]+s\)"
        cut += " is cut off"
        name = rf"slow#0 cpu{row['cpu']} \(pid {row['pid']}\)"
        log = up.read_log()
        assert re.search(rf"WARNING killing worker {name}: {cut}\n", log), log
        assert re.search(rf"{name} was killed by SIGKILL while draining \({cut}\)\n", log), log
        assert re.search(rf"^killed worker {name}: {cut}$", out.stdout, re.M), out.stdout
    finally:
        up.stop()


def test_farm_stop_names_a_command_worker_its_stop_signal_cut_off_past_the_grace(
    tmp_path: Path,
) -> None:
    # `farm stop` named the workers SIGKILLed alone: one that died of its stop signal past
    # the grace, its job cut off (the journal said so), was not among "the workers it had
    # to kill" (docs/operations.md).
    up = deaf_farm(tmp_path, grace=1, deaf=False)  # it dies of its stop signal
    try:
        row, task, out = stopped_holding_a_job(up, tmp_path)
        name = rf"slow#0 cpu{row['cpu']} \(pid {row['pid']}\)"
        assert f"(pid {row['pid']}) was killed by SIGTERM while draining" in up.read_log()
        assert re.search(
            rf"^killed worker {name}: did not drain in time; its job {re.escape(task.handle)}"
            rf" \(running [\d.]+s\) is cut off$",
            out.stdout,
            re.M,
        ), out.stdout
    finally:
        up.stop()


# A PHP worker whose pcntl handler only sets a flag: it finishes its job, then exits 0.
GRACEFUL_WORKER = DEAF_WORKER.replace(
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n", ""
).replace(
    "\n@worker.function",
    "\nsignal.signal(signal.SIGTERM, lambda *a: worker.stop())\n\n@worker.function",
)


@pytest.mark.parametrize("how", ["scale", "stop"])
def test_a_command_worker_that_finishes_its_job_after_its_stop_signal_is_not_said_cut_off(
    tmp_path: Path, how: str
) -> None:
    # Its group gone, the stop signal past the grace was taken to have cut its job off,
    # whatever its exit: "exited with code 0 while draining (did not drain in time; its
    # job H:... is cut off)", and `farm stop` listed it as a killed worker, though it
    # finished the job (its client had the result) and nothing was killed.
    script = tmp_path / "graceful.py"
    script.write_text(GRACEFUL_WORKER)
    argv = [sys.executable, str(script), str(tmp_path / "gate")]
    up = FarmUp(
        tmp_path,
        f"[functions.slow]\ncommand = {json.dumps(argv)}\nworkers = 1\ngraceful_timeout = 1\n",
        metrics=False,
    )
    stopped: list[subprocess.CompletedProcess[str]] = []
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("a worker serving", lambda: up.workers("slow", "running"))
        with Gate(tmp_path / "gate") as gate, Client(up.addr, timeout=30) as client:
            task = client.submit("slow", "x")
            gate.arrived(1)
            stop = threading.Thread(
                target=lambda: stopped.append(
                    farm_cli(how, *(["slow=0"] if how == "scale" else []), "--control", up.control)
                )
            )
            stop.start()
            log_line(up, f"{task.handle} still runs after the 1s grace; SIGTERM")
            gate.open()
            assert client.wait(task, timeout=10) == b"done"
            end = log_line(up, f"(pid {row['pid']}) exited")
            stop.join(30)
        assert end.endswith("exited with code 0 after draining"), end
        assert stopped and stopped[0].returncode == 0, stopped
        assert "killed worker" not in stopped[0].stdout, stopped[0].stdout
        assert "cut off" not in up.read_log()
    finally:
        up.stop()


def test_farm_stop_names_a_wrappers_worker_the_sigkill_to_its_group_cut_off(
    tmp_path: Path,
) -> None:
    # The SIGKILL past the grace to what a wrapper's shell left went to a process that was
    # neither a worker nor a reaped one: the journal named its job, `farm stop` did not
    # (docs/operations.md, "Stop", says it names the workers it had to kill).
    up = deaf_farm(tmp_path, grace=1, wrapped=True)
    try:
        row, task, out = stopped_holding_a_job(up, tmp_path)
        assert re.search(
            rf"^killed worker slow#0 cpu{row['cpu']} \(pid {row['pid']}\): did not drain in time;"
            rf" its job {re.escape(task.handle)} \(running [\d.]+s\) is cut off$",
            out.stdout,
            re.M,
        ), out.stdout
    finally:
        up.stop()


# SIGQUIT: stopped at once, said so, and not held up by a hung job server.


def command_farm(tmp_path: Path, workers: int) -> FarmUp:
    script = tmp_path / "deaf.py"
    script.write_text(DEAF_WORKER)
    argv = [sys.executable, str(script), str(tmp_path / "gate")]
    pool = f"[functions.slow]\ncommand = {json.dumps(argv)}\nworkers = {workers}\n"
    return FarmUp(tmp_path, pool + "graceful_timeout = 5\n", metrics=False)


def test_an_idle_command_worker_stopped_by_sigquit_is_said_stopped_at_once(
    tmp_path: Path,
) -> None:
    # Its exit line said "was killed by SIGTERM after draining" (or "while draining", when
    # the SIGKILL that follows at once came first): SIGQUIT drains nothing ("with no grace
    # and no drain", docs/operations.md).
    up = command_farm(tmp_path, 1)
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("a worker serving", lambda: up.workers("slow", "running"))
        up.signal(signal.SIGQUIT)
        assert up.proc.wait(20) == 0
        end = log_line(up, f"(pid {row['pid']}) ")
        assert re.search(r"was killed by SIG(TERM|KILL) \(stopped at once \(SIGQUIT\)\)$", end), end
    finally:
        up.stop()


def test_sigquit_with_the_job_server_hung_stops_the_command_workers_at_once(
    tmp_path: Path,
) -> None:
    # Each command worker's job in hand was read before its signal, and each one killed
    # excused, one admin query at a time: with the server hung, each waited out the admin
    # timeout (0.5 s), and 6 workers took some 6 s to be stopped "at once".
    up = command_farm(tmp_path, 6)
    server = 0
    try:
        up.expect_notify("READY=1")
        rows = wait_for(
            "6 serving",
            lambda: len(up.workers("slow", "running")) == 6 and up.workers("slow", "running"),
        )
        server = int(re.search(r"job server starting \(pid (\d+)\)", up.read_log())[1])
        with Gate(tmp_path / "gate") as gate, Client(up.addr) as client:
            tasks = [client.submit("slow", str(i), background=True) for i in range(3)]
            gate.arrived(3)
            os.kill(server, signal.SIGSTOP)
            start = time.monotonic()
            up.signal(signal.SIGQUIT)
            for row in rows:
                log_line(up, f"(pid {row['pid']}) was killed")
            took = time.monotonic() - start
        assert took < 1.5, (took, up.read_log())
        assert len(tasks) == 3
    finally:
        if server:
            os.kill(server, signal.SIGCONT)
        up.stop()


# A command worker deaf to SIGTERM from its start, as a PHP worker with
# pcntl_signal(SIGTERM, SIG_IGN) at its top is: it holds no job when its stop comes.
DEAF_ALWAYS = DEAF_WORKER.replace(
    "worker = farm.Worker(", "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nworker = farm.Worker("
)


def test_an_idle_command_worker_deaf_to_sigterm_is_said_to_have_ignored_it(
    tmp_path: Path,
) -> None:
    # `farm scale slow=1` killed the idle deaf worker past its grace as "did not drain in
    # time": it had nothing to drain; it ignored the signal.
    script = tmp_path / "deaf.py"
    script.write_text(DEAF_ALWAYS)
    argv = [sys.executable, str(script), str(tmp_path / "gate")]
    pool = f"[functions.slow]\ncommand = {json.dumps(argv)}\nworkers = 2\ngraceful_timeout = 1\n"
    up = FarmUp(tmp_path, pool, metrics=False)
    try:
        up.expect_notify("READY=1")
        wait_for("both serving", lambda: len(up.workers("slow", "running")) == 2)
        assert farm_cli("scale", "slow=1", "--control", up.control).returncode == 0
        line = log_line(up, "killing worker slow#1")
        assert line.endswith("): ignored SIGTERM, holding no job"), line
    finally:
        assert up.stop() == 0
