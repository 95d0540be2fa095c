"""A supervisor that takes the connection and does not answer: stopped by job control, or
its loop hung."""

from __future__ import annotations

import os
import signal
import socket
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
