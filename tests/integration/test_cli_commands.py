"""What the client and supervisor commands print against a running server or farm: `farm
status --json`, `farm jobs`, `farm submit`'s work data and progress bar, the commands finding
the farm of a config, `farm ps` (busy workers, --watch) and `farm stop` showing the drain."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from farm.cli import app
from farm.cli.watch import progress_bar
from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.clirun import cli, one_line_error
from tests.helpers.farmproc import FarmUp
from tests.helpers.peers import Peer
from tests.helpers.servers import Server
from tests.helpers.serving import serving
from tests.helpers.waiting import wait_for

runner = CliRunner()

SLOW = """
[functions.slow]
target = "slowjobs:slow"
workers = 1
"""


def test_status_json_uses_the_tables_names(farm_server: Server) -> None:
    table = cli("status", "--server", farm_server.addr)
    header = [h.lower() for h in table.stdout.splitlines()[0].split()]
    Peer(farm_server.addr).send(T.SUBMIT_JOB_BG, "f", "", "x")
    data = wait_for(
        "the job",
        lambda: json.loads(cli("status", "--server", farm_server.addr, "--json").stdout)[
            "functions"
        ],
    )
    assert list(data[0]) == header


def test_jobs_lists_running_and_queued_jobs_oldest_first(farm_server: Server) -> None:
    client = Peer(farm_server.addr)
    handles = []
    for function, kind in (
        ("a", T.SUBMIT_JOB_BG),
        ("b", T.SUBMIT_JOB_LOW_BG),
        ("a", T.SUBMIT_JOB_HIGH_BG),
    ):
        client.send(kind, function, "", "x")
        handles.append(client.expect(T.JOB_CREATED).args[0].decode())
    worker = Peer(farm_server.addr)
    worker.send(T.CAN_DO, "a")
    worker.send(T.GRAB_JOB)
    running = worker.expect(T.JOB_ASSIGN).args[0].decode()
    out = cli("jobs", "--server", farm_server.addr)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    # One AGE column held the time since queued for one and since taken for another.
    assert lines[0] == ["FUNCTION", "HANDLE", "STATE", "PRIORITY", "WAITING", "RUNNING"]
    assert [(r[0], r[1]) for r in lines[1:]] == [
        ("a", handles[0]),
        ("a", handles[2]),
        ("b", handles[1]),
    ]
    states = {r[1]: (r[2], r[3]) for r in lines[1:]}
    assert states[running] == ("running", "high")  # the high one runs first
    assert states[handles[1]] == ("queued", "low")
    times = {r[1]: (r[4].endswith("s"), r[5].endswith("s")) for r in lines[1:]}
    assert times[running] == (False, True) and times[handles[1]] == (True, False), lines
    rows = json.loads(cli("jobs", "--server", farm_server.addr, "--json").stdout)
    assert {r["handle"] for r in rows} == set(handles) and all(r["age"] >= 0 for r in rows)
    # gearmand's four fields of `show jobs` are kept as they are
    from farm.client.admin import admin_query

    assert all(
        len(line.split("\t")) == 4
        for line in admin_query(farm_server.addr, "show jobs").splitlines()[:-1]
    )


def test_jobs_against_gearmand_says_it_is_not_supported(gearmand: Server) -> None:
    out = cli("jobs", "--server", gearmand.addr)
    assert out.returncode == 1
    assert "does not support `farm jobs`" in one_line_error(out.stderr)


def chatty(job: Any) -> bytes:
    for i in range(3):
        job.send_status(i + 1, 3)
        job.send_data(f"chunk{i}\n")
        time.sleep(0.2)
    return b"done\n"


def test_submit_prints_work_data_as_it_arrives(farm_server: Server) -> None:
    with serving(farm_server.addr, {"chatty": chatty}):
        out = runner.invoke(app, ["submit", "chatty", "x", "--server", farm_server.addr])
    assert out.exit_code == 0, out.output
    assert out.stdout == "chunk0\nchunk1\nchunk2\ndone\n"
    assert "[" not in out.stderr  # no bar off a terminal


def test_submit_draws_work_status_as_a_bar_on_a_terminal(farm_server: Server) -> None:
    assert progress_bar(5, 10, width=10) == "[#####.....]  50% (5/10)"
    with serving(farm_server.addr, {"chatty": chatty}):
        main, sub = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from farm.cli import main; main()"]
            + ["submit", "chatty", "x", "--server", farm_server.addr],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=sub,
        )
        os.close(sub)
        seen = b""
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
        assert proc.wait(20) == 0
        os.close(main)
    assert b"(1/3)" in seen and b"(3/3)" in seen and b"\r\x1b[K" in seen
    assert proc.stdout is not None and proc.stdout.read() == b"chunk0\nchunk1\nchunk2\ndone\n"


def test_submit_says_when_no_worker_has_the_function(farm_server: Server) -> None:
    out = cli("submit", "nobody", "x", "--timeout", "4.5", "--server", farm_server.addr)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert "no worker has registered 'nobody'" in lines[0]
    assert "not done within" in lines[-1]


@pytest.fixture
def slow_farm(tmp_path: Path):
    (tmp_path / "slowjobs.py").write_text(
        "import time\n\ndef slow(job):\n    time.sleep(float(job.data or 30))\n    return b'ok'\n"
    )
    farm = FarmUp(tmp_path, SLOW, start=False)
    farm.config.write_text(
        farm.config.read_text().replace("graceful_timeout = 10", "graceful_timeout = 1")
    )
    farm.start()
    farm.expect_notify("READY=1")
    yield farm
    farm.stop()


def test_client_commands_find_the_farm_of_a_config(slow_farm: FarmUp) -> None:
    # --config names the farm, as it does for ps and stop: its server, not $FARM_SERVERS'
    env = dict(os.environ, FARM_SERVERS="127.0.0.1:1")
    status = cli("status", "--config", str(slow_farm.config), timeout=30, env=env)
    assert status.returncode == 0 and "slow" in status.stdout, status.stderr
    jobs = cli("jobs", "--config", str(slow_farm.config), timeout=30, env=env)
    assert jobs.returncode == 0 and jobs.stdout.startswith("FUNCTION"), jobs.stderr
    args = ["submit", "slow", "0", "--config", str(slow_farm.config)]
    submitted = cli(*args, timeout=30, env=env)
    assert (submitted.returncode, submitted.stdout) == (0, "ok"), submitted.stderr


def test_ps_shows_a_busy_workers_job_and_watch_redraws(slow_farm: FarmUp) -> None:
    client = Peer(slow_farm.addr)
    client.send(T.SUBMIT_JOB_BG, "slow", "", "30")
    handle = client.expect(T.JOB_CREATED).args[0].decode()
    wait_for("a busy worker", lambda: slow_farm.workers("slow", "busy"))
    ctl = ["--control", slow_farm.control]
    out = runner.invoke(app, ["ps", *ctl])
    assert out.exit_code == 0
    header, *rows = out.stdout.splitlines()
    assert header.split()[-1] == "JOB"
    busy = next(r for r in rows if " busy " in r)
    assert "slow" in busy and re.search(re.escape(handle) + r" \(\d+\.\ds\)", busy), busy
    row = next(r for r in json.loads(runner.invoke(app, ["ps", "--json", *ctl]).stdout) if r["job"])
    assert row["job"] == handle and row["busy_for"] >= 0
    wide = dict(os.environ, COLUMNS="200")  # rich fits its table to the terminal's width
    watch = cli("ps", "--watch", "--interval", "0.2", "--count", "3", *ctl, timeout=30, env=wide)
    assert watch.returncode == 0, watch.stderr
    assert watch.stdout.count("FUNCTION") == 3 and handle in watch.stdout


def test_stop_shows_the_drain_and_what_it_killed(slow_farm: FarmUp) -> None:
    # A Python worker killed at the end of the drain was "did not drain in time" in `farm
    # stop` and the journal, and its end "was killed by SIGKILL after draining": nothing
    # said it held a job, nor which (a command worker's warning names it).
    client = Peer(slow_farm.addr)
    client.send(T.SUBMIT_JOB_BG, "slow", "", "30")
    handle = client.expect(T.JOB_CREATED).args[0].decode()
    busy = wait_for("a busy worker", lambda: slow_farm.workers("slow", "busy"))[0]
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(out=cli("stop", "--control", slow_farm.control, timeout=30))
    )
    thread.start()
    # Its own row read "running" while it stopped: `farm ps` during a long `systemctl stop`.
    wait_for(
        "the supervisor's row says it stops",
        lambda: (
            [r["state"] for r in slow_farm.ps() if r["function"] == "supervisor"] == ["stopping"]
        ),
        timeout=10,
    )
    thread.join(40)
    out = result["out"]
    assert out.returncode == 0, out.stderr
    assert "draining: 1 worker left" in out.stdout
    assert re.search(
        rf"killed worker slow#0 cpu\d+ \(pid {busy['pid']}\): did not drain in time;"
        rf" its job {re.escape(handle)} \(running [\d.]+s\) is cut off",
        out.stdout,
    ), out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("stopped (supervisor ")
    assert slow_farm.proc.wait(20) == 0
    log = slow_farm.read_log()
    assert f"(pid {busy['pid']}) was killed by SIGKILL while draining (did not drain" in log, log
    assert "SIGKILL after draining" not in log, log


#: `farm COMMAND ARGS` in a line of shell: at its start, after a pipe, `;`, `&` or `(`, or
#: `sudo -u USER`; ARGS end where the next command starts (` | `, ` & `, `; `, `)`). A `|`
#: with no spaces is a synopsis' choice (`[--priority high|normal|low]`).
