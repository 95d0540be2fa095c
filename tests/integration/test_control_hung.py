"""A supervisor that takes the connection and does not answer: stopped by job control, or
its loop hung."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from farm.pools.control import ControlUnavailable, request
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(40)


def test_a_stopped_supervisor_is_named_at_once_and_asked_nothing(tmp_path: Path) -> None:
    # `farm ps` (and stop, scale, reload) against a supervisor stopped with Ctrl-Z or SIGSTOP
    # waited the request's whole timeout (30 s) and said "control socket ...: timed out",
    # and what it sent (a stop, a scale) then happened at `fg`, long after it was given up.
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        os.kill(up.proc.pid, signal.SIGSTOP)
        stopped = psutil.Process(up.proc.pid)
        wait_for("the stop to take", lambda: stopped.status() == psutil.STATUS_STOPPED)
        started = time.monotonic()
        try:
            with pytest.raises(ControlUnavailable) as caught:
                request(up.control, {"cmd": "stop"}, timeout=20.0)
        finally:
            os.kill(up.proc.pid, signal.SIGCONT)
        assert time.monotonic() - started < 10, "it waited for the stopped supervisor"
        said = str(caught.value)
        assert f"the supervisor (pid {up.proc.pid}) at {up.control} is stopped" in said, said
        assert f"kill -CONT {up.proc.pid}" in said and "nothing was asked" in said, said
        assert request(up.control, {"cmd": "ps"}, timeout=10.0)["ok"], "the stop was not sent"
        assert up.alive()
    finally:
        assert up.stop() == 0


def test_a_supervisor_that_does_not_answer_is_named_with_its_pid(tmp_path: Path) -> None:
    # A loop that hangs takes the connection and says nothing: the request waited and said
    # "timed out", not which process holds the socket, nor that what was sent may still act.
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()  # accepted by the kernel, never answered: a hung loop
        with pytest.raises(ControlUnavailable) as caught:
            request(path, {"cmd": "ps"}, timeout=1.0)
    said = str(caught.value)
    assert f"the supervisor (pid {os.getpid()}, " in said, said
    assert "did not answer within 1s" in said and "may still" in said, said


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    stopped = psutil.Process(pid)
    wait_for("the stop to take", lambda: stopped.status() == psutil.STATUS_STOPPED)


def test_ps_watch_waits_for_a_supervisor_stopped_while_it_draws(tmp_path: Path) -> None:
    # Ctrl-Z in farm up's terminal while `farm ps --watch` (or `farm top`) drew in another:
    # it said "the farm stopped" and exited, though the server and workers served on.
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    cli = [sys.executable, "-c", "from farm.cli import main; main()"]
    argv = [*cli, "ps", "--watch", "--interval", "0.2", "--count", "8", "--control", up.control]
    watch = None
    try:
        up.expect_notify("READY=1")
        wide = dict(up.env, COLUMNS="200")  # rich fits its lines to COLUMNS where it is set
        watch = subprocess.Popen(
            argv, cwd=tmp_path, env=wide, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert watch.stdout is not None
        assert b"FUNCTION" in watch.stdout.readline() + watch.stdout.readline()  # it draws
        _stop(up.proc.pid)
        try:
            out, err = watch.communicate(timeout=30)
        finally:
            os.kill(up.proc.pid, signal.SIGCONT)
        assert watch.returncode == 0, err
        assert b"the supervisor is stopped (Ctrl-Z): waiting for it" in out, out
        assert b"the farm stopped" not in out + err, out + err
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
        assert up.stop() == 0


def test_a_second_farm_up_beside_a_stopped_one_says_it_is_stopped(tmp_path: Path) -> None:
    # It said "another process answers at ... (a busy supervisor?): [Errno 98]".
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    cli = [sys.executable, "-c", "from farm.cli import main; main()"]
    try:
        up.expect_notify("READY=1")
        _stop(up.proc.pid)
        try:
            second = subprocess.run(
                [*cli, "up", "-c", up.config_arg],
                cwd=tmp_path,
                env=up.env,
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            os.kill(up.proc.pid, signal.SIGCONT)
        assert second.returncode == 1, second.stderr
        said = second.stderr.strip().splitlines()[-1]
        assert "another supervisor is running" in said, second.stderr
        assert f"(pid {up.proc.pid})" in said and "is stopped (Ctrl-Z" in said, said
    finally:
        assert up.stop() == 0
