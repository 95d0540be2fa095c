"""A farm that is stopping: its running jobs finish, and nothing asked of it meanwhile
(scale, restart, reload) changes that or takes the supervisor down."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

#: A worker module whose job waits at the gate its data names (tests.helpers.gate) until
#: the test opens it.
NAP_AT_GATE = """
from tests.helpers.calls import wait_gate

def nap(job):
    wait_gate(job.text)
    return b"awake"
"""


def test_scale_restart_and_reload_while_stopping_are_refused_and_the_job_finishes(
    tmp_path: Path,
) -> None:
    # `farm scale` during the drain raised KeyError in the supervisor (the pools' targets
    # were cleared), which then died with the job still running: the caller lost it.
    # The job runs until the test opens its gate: a job of fixed length (it slept 3 s) could
    # end before the four commands under a loaded machine, and the test then failed.
    (tmp_path / "sleepy.py").write_text(NAP_AT_GATE)
    gate = Gate(tmp_path / "gate")
    up = FarmUp(tmp_path, '[functions.nap]\ntarget = "sleepy:nap"\nworkers = 2\n', start=False)
    # The drain ends when the test opens the gate, never at the grace: past FarmUp's 10 s
    # (the four commands are four processes, ~2 s each on a loaded 2-core machine) the job
    # was killed, the supervisor exited and the last command found it gone.
    up.config.write_text(
        up.config.read_text().replace("graceful_timeout = 10", "graceful_timeout = 120")
    )
    up.start()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"nap": 2})
        got: list[bytes | BaseException] = []

        def call() -> None:
            with Client(up.addr) as c:
                try:
                    got.append(c.call("nap", gate.path, timeout=30))
                except BaseException as exc:  # what the test reports
                    got.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_for("the job to start", lambda: up.workers("nap", "busy"))
        up.signal(signal.SIGTERM)
        up.expect_notify("STOPPING=1")
        # `systemctl status` read "2/2 workers up" through the whole drain: STATUS= was
        # last sent while it ran.
        up.expect_notify("STATUS=stopping: 1 worker draining")
        for args, word in (
            (("scale", "nap=5"), "scaled"),
            (("scale", "nap=+1"), "scaled"),
            (("restart", "nap"), "restarted"),
            (("reload",), "reloaded"),
        ):
            out = farm_cli(*args, "--control", up.control)
            assert out.returncode == 1, (args, out.stdout, out.stderr)
            assert f"the farm is stopping; nothing was {word}" in out.stderr, out.stderr
        assert not got, "the job ended before the commands were refused"
        gate.open()
        caller.join(30)
        assert got == [b"awake"]
        up.proc.wait(30)
        assert up.proc.returncode == 0, up.read_log()[-2000:]
        assert "Traceback" not in up.read_log()
    finally:
        gate.open()
        up.stop()


def test_a_second_sigterm_does_not_announce_a_new_drain(tmp_path: Path) -> None:
    # Each SIGTERM logged "stopping: draining workers (grace 10s)" again, which read as a
    # grace counted afresh from the second signal; the drain goes on as it was.
    (tmp_path / "sleepy.py").write_text(
        "import time\n\ndef nap(job):\n    time.sleep(float(job.data))\n    return b'awake'\n"
    )
    up = FarmUp(tmp_path, '[functions.nap]\ntarget = "sleepy:nap"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"nap": 1})
        with Client(up.addr) as client:
            client.submit("nap", "2", background=True)
            wait_for("the job to start", lambda: up.workers("nap", "busy"))
            up.signal(signal.SIGTERM)
            up.expect_notify("STOPPING=1")
            up.signal(signal.SIGTERM)
            up.proc.wait(30)
        log = up.read_log()
        assert up.proc.returncode == 0, log[-2000:]
        assert log.count("stopping: draining workers") == 1, log
        assert "asked to stop again: still draining (SIGQUIT stops at once)" in log, log
    finally:
        up.stop()


def test_sigquit_during_a_drain_says_it_stopped_the_worker_at_once(tmp_path: Path) -> None:
    # SIGQUIT cuts the drain short, yet the journal's warning and `farm stop` said the
    # worker "did not drain in time", 1 s into a 120 s grace: as if it had hung.
    (tmp_path / "sleepy.py").write_text(NAP_AT_GATE)
    gate = Gate(tmp_path / "gate")
    up = FarmUp(tmp_path, '[functions.nap]\ntarget = "sleepy:nap"\nworkers = 1\n', grace=120)
    try:
        up.expect_notify("READY=1")
        (row,) = up.wait_idle({"nap": 1})
        with Client(up.addr) as c:
            task = c.submit("nap", gate.path, background=True)
            wait_for("the job to start", lambda: up.workers("nap", "busy"))
            stopped: list[subprocess.CompletedProcess[str]] = []
            stop = threading.Thread(
                target=lambda: stopped.append(farm_cli("stop", "--control", up.control))
            )
            stop.start()
            up.expect_notify("STOPPING=1")
            up.signal(signal.SIGQUIT)
            assert up.proc.wait(20) == 0
            stop.join(30)
        cut = (
            f"nap#0 cpu{row['cpu']} (pid {row['pid']}): stopped at once (SIGQUIT);"
            f" its job {task.handle} (running "
        )
        log = up.read_log()
        assert f"WARNING killing worker {cut}" in log, log
        assert "did not drain in time" not in log, log
        assert f"(pid {row['pid']}) was killed by SIGKILL while draining (stopped at once" in log
        (out,) = stopped
        assert f"killed worker {cut}" in out.stdout, (out.stdout, out.stderr)
    finally:
        gate.open()
        up.stop()


def test_a_python_worker_replaced_by_a_command_one_is_killed_past_the_grace(
    tmp_path: Path,
) -> None:
    # At the stop, a worker's grace was chosen by its pool's kind, not its own: stopped while
    # a reload replaced a Python pool by a command (its new process not serving yet), the
    # old Python worker got a command worker's grace, none of its own, and its job, past
    # graceful_timeout, held `farm stop` (systemctl stop) for ever.
    (tmp_path / "sleepy.py").write_text(NAP_AT_GATE)
    gate = Gate(tmp_path / "gate")
    up = FarmUp(tmp_path, '[functions.nap]\ntarget = "sleepy:nap"\nworkers = 1\n', grace=1)
    try:
        up.expect_notify("READY=1")
        (row,) = up.wait_idle({"nap": 1})
        with Client(up.addr) as c:
            c.submit("nap", gate.path, background=True)
            wait_for("the job to start", lambda: up.workers("nap", "busy"))
            # A command that never connects: the rollout waits for it (boot_timeout, 60 s).
            text = up.config.read_text().replace('target = "sleepy:nap"', 'command = "sleep 60"')
            up.config.write_text(text)
            up.signal(signal.SIGHUP)
            wait_for("its successor", lambda: len(up.workers("nap")) == 2)
            up.signal(signal.SIGTERM)
            assert up.proc.wait(20) == 0
        assert f"killing worker nap#0 cpu{row['cpu']} (pid {row['pid']})" in up.read_log()
    finally:
        gate.open()
        up.stop()


def test_a_job_server_that_dies_during_the_drain_is_not_said_to_restart(tmp_path: Path) -> None:
    # It was logged as at any other time, "job server (pid N) was killed by SIGKILL;
    # restarting now", a warning of a restart that never came: nothing starts while the
    # farm stops (a restarted server would not know the jobs in hand either).
    (tmp_path / "sleepy.py").write_text(NAP_AT_GATE)
    gate = Gate(tmp_path / "gate")
    up = FarmUp(tmp_path, '[functions.nap]\ntarget = "sleepy:nap"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"nap": 1})
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        with Client(up.addr) as c:
            c.submit("nap", gate.path, background=True)
            wait_for("the job to start", lambda: up.workers("nap", "busy"))
        up.signal(signal.SIGTERM)
        up.expect_notify("STOPPING=1")
        os.kill(server, signal.SIGKILL)
        wait_for("its end logged", lambda: f"job server (pid {server}) was" in up.read_log())
        gate.open()
        assert up.proc.wait(30) == 0
        log = up.read_log()
        said = f"job server (pid {server}) was killed by SIGKILL; not restarted: the farm stops"
        assert said in log and "restarting" not in log, log
    finally:
        gate.open()
        up.stop()


def test_a_job_server_that_does_not_stop_is_said_killed_and_reaped(tmp_path: Path) -> None:
    # A job server stopped (SIGSTOP, a debugger, SIGTTOU on a terminal) takes no graceful
    # stop: 5 s later the supervisor SIGKILLed it and ended at once, before the kill had
    # taken, saying nothing of it but "supervisor stopped", and left it unreaped.
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    server = 0
    try:
        up.expect_notify("READY=1")
        (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
        os.kill(server, signal.SIGSTOP)
        up.signal(signal.SIGTERM)
        assert up.proc.wait(30) == 0
        log = up.read_log()
        assert f"job server (pid {server}) was killed by SIGKILL" in log, log
    finally:
        if server:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
        up.stop()


def test_sigusr1_and_sigusr2_are_said_to_be_no_supervisor_signals_and_change_nothing(
    tmp_path: Path,
) -> None:
    # Python's default for both is to end the process: a `kill -USR1` from a gearmand habit
    # (gearmand and `farm server` stop gracefully on it) took the supervisor down at once,
    # its workers with it mid-job, with no drain and no word in the log.
    up = FarmUp(tmp_path, '[functions.rev]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        (before,) = up.wait_idle({"rev": 1})
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            up.signal(sig)
            wait_for(f"{sig.name} said", lambda sig=sig: f"{sig.name} ignored" in up.read_log())
        assert up.alive()
        with Client(up.addr) as client:
            assert client.call("rev", "abc", timeout=10) == b"cba"
        (after,) = up.wait_idle({"rev": 1})
        assert after["pid"] == before["pid"]  # nothing was drained or restarted
        assert "SIGTERM stops" in up.read_log()
    finally:
        assert up.stop() == 0


def deaf_pool(tmp_path: Path, command: str) -> FarmUp:
    """A farm whose one pool runs ``command`` (graceful_timeout = 2), beside deaf.py: a
    process that ignores SIGTERM and touches the path its argument names once it does."""
    (tmp_path / "deaf.py").write_text(
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "Path(sys.argv[1]).touch()\n"
        "time.sleep(300)\n"
    )
    return FarmUp(
        tmp_path,
        f"[functions.deaf]\ncommand = {command}\nworkers = 1\ngraceful_timeout = 2\n",
        supervisor="ready_wait = 1",  # it never connects: READY=1 without it
    )


def test_a_wrapper_s_worker_draining_after_its_shell_is_counted_while_stopping(
    tmp_path: Path,
) -> None:
    # `sh -c "worker; ..."`: the shell dies of the stop signal at once, its worker finishes
    # on; the farm waits for it, and STATUS= said "stopping: 0 workers draining" meanwhile.
    up = deaf_pool(tmp_path, f'["sh", "-c", "{sys.executable} deaf.py $$; echo done"]')
    try:
        up.expect_notify("READY=1")
        (row,) = wait_for("the wrapper", lambda: [r for r in up.workers("deaf") if r["pid"]])
        wait_for("its worker ignores SIGTERM", (tmp_path / str(row["pid"])).exists)
        stop = farm_cli("stop", "--control", up.control)  # `farm stop` counted as STATUS= did
        assert stop.returncode == 0, stop.stdout + stop.stderr
        # Its shell ended at once; its worker is counted down to its SIGKILL (it said 0 then).
        assert re.search(r"^draining: 1 worker left, [01]s before SIGKILL$", stop.stdout, re.M)
        assert up.proc.wait(30) == 0
        up.expect_notify("STATUS=stopping: the job server stops")  # sent before it ended
        said = [m for m in up.messages if m.startswith("STATUS=stopping")]
        assert said[0] == "STATUS=stopping: 1 worker draining", said
        assert "STATUS=stopping: 0 workers draining" not in said, said  # its worker drained on
    finally:
        up.stop()


def test_farm_stop_counts_the_detached_processes_it_waits_for(tmp_path: Path) -> None:
    # A command worker's setsid child deaf to SIGTERM: the farm waits for it up to its
    # grace, and `farm stop` said "draining: 0 workers left" all that while, no deadline.
    up = deaf_pool(
        tmp_path, f'["sh", "-c", "setsid {sys.executable} deaf.py detached & exec sleep 300"]'
    )
    try:
        up.expect_notify("READY=1")
        wait_for("its child ignores SIGTERM", (tmp_path / "detached").exists)
        stop = farm_cli("stop", "--control", up.control)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        lines = stop.stdout.splitlines()
        said = r"^draining: 0 workers left, 1 detached process, [0-2]s before SIGKILL$"
        assert any(re.match(said, line) for line in lines), stop.stdout
        # The wait was said: "0 left" only once the detached one is gone too.
        last = max(i for i, line in enumerate(lines) if "detached" in line)
        early = [ln for ln in lines[:last] if ln.startswith("draining: 0 workers left")]
        assert all("detached" in ln for ln in early), stop.stdout
        assert up.proc.wait(30) == 0
    finally:
        up.stop()
