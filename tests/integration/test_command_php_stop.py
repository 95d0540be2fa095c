"""A PHP command worker that takes SIGTERM as a request (pcntl_signal setting a flag) ends
at a restart once it holds no job, as docs/operations.md ("Command pools") shows it.

Found in a PHP operator's review: the docs said such a worker "finishes the job and exits",
but libgearman's work() waits for a job in C, where PHP runs no handler, and goes on
waiting after the signal: the idle worker never saw its flag and was killed a
graceful_timeout later ("ignored SIGTERM, holding no job") at every restart, reload and
stop. The documented loop gives work() a timeout. Skipped where PHP's gearman extension is
absent (failed under FARM_REQUIRE_INTEROP=1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from farm.client import Client
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import php
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

# The loop of docs/operations.md ("Command pools"), after its worker's setup.
GRACEFUL = """\
pcntl_async_signals(true);
$stop = false;
pcntl_signal(SIGTERM, function () use (&$stop) { $stop = true; });
$worker->setTimeout(1000);  // ms: an idle work() comes back to the loop each second
$transient = [GEARMAN_TIMEOUT, GEARMAN_IO_WAIT, GEARMAN_NO_JOBS];
while (!$stop && (@$worker->work() || in_array($worker->returnCode(), $transient, true)));
"""

WORKER = f"""<?php
$worker = new GearmanWorker();
$worker->addServer(getenv("FARM_SERVER_HOST"), (int)getenv("FARM_SERVER_PORT"));
$worker->addFunction("flag", function ($job) {{ return strrev($job->workload()); }});
{GRACEFUL}"""

#: Far past the few seconds the loop takes to end: a kill at the grace's end is told apart.
GRACE = 40


def test_the_documented_pcntl_loop_ends_at_a_restart_without_waiting_for_the_kill(
    tmp_path: Path,
) -> None:
    assert GRACEFUL in (ROOT / "docs" / "operations.md").read_text()
    script = tmp_path / "flag.php"
    script.write_text(WORKER)
    up = FarmUp(
        tmp_path,
        f'[functions.flag]\ncommand = ["{php()}", "{script}"]\nworkers = 1\n'
        f"graceful_timeout = {GRACE}\n",
    )
    try:
        up.expect_notify("READY=1")
        (old,) = wait_for("the PHP worker serving", lambda: up.workers("flag", "running"), 30)
        with Client(f"unix:{up.unix}") as client:
            assert client.call("flag", "abc", timeout=20) == b"cba"
        assert farm_cli("restart", "flag", "--control", up.control).returncode == 0
        end = wait_for(
            "the old worker's end",
            lambda: re.search(rf".* worker flag#0 cpu\d+ \(pid {old['pid']}\) .*", up.read_log()),
            GRACE - 10,
        )
        assert "exited with code 0 after draining" in end.group(0), end.group(0)
        with Client(f"unix:{up.unix}") as client:
            assert client.call("flag", "xyz", timeout=20) == b"zyx"
    finally:
        assert up.stop() == 0
