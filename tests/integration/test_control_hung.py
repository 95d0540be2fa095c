"""A supervisor that takes the connection and never answers (stopped, or its loop hung)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from farm.pools.control import ControlUnavailable, request
from tests.helpers.farmproc import FarmUp

pytestmark = pytest.mark.timeout(40)


def test_a_supervisor_that_does_not_answer_is_named_with_its_pid(tmp_path: Path) -> None:
    # `farm ps` (and stop, scale, reload) against a supervisor stopped with SIGSTOP waited
    # 30 s and said "control socket /run/farm/control.sock: timed out": not which process
    # holds the socket, that it may be hung, nor that a stop or scale sent may still happen.
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        os.kill(up.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ControlUnavailable) as caught:
                request(up.control, {"cmd": "ps"}, timeout=1.0)
        finally:
            os.kill(up.proc.pid, signal.SIGCONT)
        said = str(caught.value)
        assert f"the supervisor (pid {up.proc.pid}, stopped) at {up.control}" in said, said
        assert "did not answer within 1s" in said and "stopped" in said, said
        assert "may still" in said, said
    finally:
        assert up.stop() == 0
