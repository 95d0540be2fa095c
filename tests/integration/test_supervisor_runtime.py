"""A running farm changed at runtime: `farm scale` under load, timeouts, recycling, a job
server that dies, what workers print. SIGHUP and reloads are in test_supervisor_reload.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from farm.client import Client
from farm.config.capacity import available_cpus
from farm.errors import FarmError, JobFailed
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.runtimepools import FUNCTIONS
from tests.helpers.streams import JobStream, running
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(40)


def test_scale_up_and_down_under_load_loses_no_job(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, FUNCTIONS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1, "hash": 1})
        stream = JobStream(up.addr)
        wait_for("jobs flowing", lambda: stream.done >= 20 or stream.errors)
        # A typo of a size is refused in one line (the host would not hold 1025 workers).
        out = farm_cli("scale", "reverse=+1024", "--control", up.control)
        assert out.returncode == 2 and "reverse would have 1025 workers" in out.stderr, out
        assert "give it 0 to 1024 (it has 1 now)" in out.stderr, out  # what to do instead
        assert len(out.stderr.strip().splitlines()) == 1
        out = farm_cli("scale", "hash=3", "reverse=+1", "--control", up.control)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["reverse=2", "hash=3"]
        wait_for("3 hash and 2 reverse workers", lambda: running(up) == {"hash": 3, "reverse": 2})
        before = stream.done
        wait_for("jobs on the grown pools", lambda: stream.done >= before + 30 or stream.errors)
        out = farm_cli("scale", "hash=-2", "reverse=1", "--control", up.control)
        assert out.returncode == 0, out.stderr
        wait_for("scaled back down", lambda: running(up) == {"hash": 1, "reverse": 1})
        wait_for("drained workers gone", lambda: not up.workers(state="draining"), 20)
        before = stream.done
        wait_for("jobs after scale-down", lambda: stream.done >= before + 20 or stream.errors)
        assert stream.stop() > 50
        assert "scaling hash from 1 to 3" in up.read_log()
        assert "crashed" not in up.read_log()
    finally:
        assert up.stop() == 0


def test_scale_to_auto_is_one_worker_per_core(tmp_path: Path) -> None:
    """`farm scale NAME=auto`, as `workers = "auto"` in the config: one per core."""
    up = FarmUp(tmp_path, FUNCTIONS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1, "hash": 1})
        cores = len(available_cpus())
        out = farm_cli("scale", "reverse=auto", "--control", up.control)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [f"reverse={cores}", "hash=1"]
        up.wait_idle({"reverse": cores, "hash": 1})
        out = farm_cli("scale", "reverse=+auto", "--control", up.control)
        assert out.returncode == 2 and "NAME=auto" in out.stderr, out
    finally:
        assert up.stop() == 0


def test_timeout_fails_the_job_and_replaces_the_worker(tmp_path: Path) -> None:
    (tmp_path / "sleepy.py").write_text(
        "import time\n\ndef nap(job):\n    time.sleep(float(job.data))\n    return b'awake'\n"
    )
    up = FarmUp(tmp_path, '[functions.nap]\ntarget = "sleepy:nap"\nworkers = 1\ntimeout = 1\n')
    try:
        up.expect_notify("READY=1")
        (first,) = up.wait_idle({"nap": 1})
        client = Client(up.addr)
        try:
            assert client.call("nap", "0", timeout=10) == b"awake"
            with pytest.raises((JobFailed, FarmError)):
                client.call("nap", "30", timeout=15)  # the server fails it after 1 s
        finally:
            client.close()

        def replaced() -> list[dict]:
            return [r for r in up.workers("nap", "idle") if r["pid"] != first["pid"]]

        (new,) = wait_for("a replacement for the stuck worker", replaced)
        assert new["cpu"] == first["cpu"] and new["restarts"] == 1
        assert "ran past its 1s timeout" in up.read_log()
    finally:
        assert up.stop() == 0


def test_worker_is_recycled_after_max_jobs(tmp_path: Path) -> None:
    up = FarmUp(
        tmp_path,
        '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\nmax_jobs = 3\n',
    )
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        client = Client(up.addr)
        try:
            for i in range(7):
                assert client.call("reverse", f"ab{i}", timeout=10) == f"{i}ba".encode()
        finally:
            client.close()
        (row,) = wait_for("two recycles", lambda: [r for r in up.workers() if r["restarts"] >= 2])
        log = up.read_log()
        assert log.count("was recycled (max_jobs 3 reached)") >= 2, log
        assert "crashed" not in log
    finally:
        assert up.stop() == 0


def test_worker_is_recycled_past_max_rss(tmp_path: Path) -> None:
    # kill_rss_mb well above: its default (1.5 x 1 MiB) would fail the job mid-run instead
    up = FarmUp(
        tmp_path,
        '[functions.rev]\ntarget = "workers.text:reverse"\nworkers = 1\nmax_rss_mb = 1\n'
        "kill_rss_mb = 4096\n",
    )
    try:
        up.expect_notify("READY=1")
        (first,) = up.wait_idle({"rev": 1})
        client = Client(up.addr)
        try:
            assert client.call("rev", "ab", timeout=10) == b"ba"  # any Python is past 1 MiB
        finally:
            client.close()
        wait_for("a recycled worker", lambda: [r for r in up.workers("rev") if r["restarts"]])
        assert re.search(r"was recycled \(RSS \d+ MiB > max_rss_mb 1\)", up.read_log())
    finally:
        assert up.stop() == 0


def test_a_dead_job_server_is_restarted_and_workers_come_back(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, FUNCTIONS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1, "hash": 1})
        (server,) = [r for r in up.ps() if r["function"] == "server"]
        up.messages.clear()  # the start's own "job server not ready" is not the one we want
        os.kill(server["pid"], signal.SIGKILL)

        def new_server() -> list[dict]:
            return [
                r
                for r in up.ps()
                if r["function"] == "server" and r["state"] == "ready" and r["restarts"] == 1
            ]

        wait_for("a new job server", new_server)
        # systemd's status says so while it is down (it read "2/2 workers up" throughout)
        assert up.expect_status("job server not ready; ").endswith("workers up")
        client = Client(up.addr, connect_timeout=2)
        try:
            # the workers reconnect by themselves; a job waits in the queue until they have
            assert client.call("reverse", "abc", timeout=15) == b"cba"
        finally:
            client.close()
        assert "job server (pid" in up.read_log() and "was killed by SIGKILL" in up.read_log()
        # Killed again soon after, it waits out a backoff (0.5 s): `farm ps` shows it so (its
        # row was missing, and workers idle beside no server looked like a healthy farm).
        (server,) = new_server()
        os.kill(server["pid"], signal.SIGKILL)

        def waiting() -> list[dict]:
            return [r for r in up.ps() if r["function"] == "server" and r["state"] == "backoff"]

        (row,) = wait_for("the server's row in its backoff", waiting)
        assert row["pid"] is None and "SIGKILL" in row["last_exit"] and row["restarts"] == 2
    finally:
        assert up.stop() == 0


def test_why_the_job_server_cannot_start_again_reaches_journalctl_p_warning(
    tmp_path: Path,
) -> None:
    # Under systemd stderr is the journal ($JOURNAL_STREAM), where a line without a <N>
    # prefix is "info". The server's one line of why it cannot start (its store broken after
    # it died) had none: `journalctl -p warning` showed "exited with code 2; restarting in
    # 16s" each time, never why. So did `farm up`'s own refusal of a broken config.
    up = FarmUp(tmp_path, FUNCTIONS, start=False)
    info = os.fstat(up.log.fileno())
    up.env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    store = tmp_path / "state" / "queue.db"
    up.config.write_text(up.config.read_text().replace('"none"', f'"{store}"', 1))
    up.start()
    try:
        up.expect_notify("READY=1")
        (server,) = [r for r in up.ps() if r["function"] == "server"]
        for leftover in store.parent.iterdir():
            leftover.unlink()
        store.mkdir()  # no store can be opened there now
        os.kill(server["pid"], signal.SIGKILL)

        def why() -> str | None:
            lines = up.read_log().splitlines()
            return next((line for line in lines if "cannot open the job store" in line), None)

        line = wait_for("the server's reason", why)
        assert line.startswith("<3>farm server: cannot open the job store"), line
        # The supervisor's line comes when it reaps the server, after the server's own.
        exited = r"^<4>.*job server \(pid \d+\) exited with code 2"
        wait_for("the exit's warning", lambda: re.search(exited, up.read_log(), re.M))
    finally:
        store.rmdir()
        assert up.stop() == 0
    (tmp_path / "bad.toml").write_text("[functions.f]\nworkers = -1\n")
    with open(tmp_path / "stderr", "w") as err:
        info = os.fstat(err.fileno())
        env = dict(up.env, JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")
        cmd = [sys.executable, "-c", "from farm.cli import main; main()", "up", "-c", "bad.toml"]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, stderr=err, timeout=60)
    assert done.returncode == 2
    assert (tmp_path / "stderr").read_text().startswith("<3>farm: "), tmp_path / "stderr"


def test_what_a_python_worker_prints_is_logged_as_its_own(tmp_path: Path) -> None:
    # print() and stderr of a job went to the log raw: untagged in text, and not JSON
    # among JSON lines (journalctl -o cat | jq stopped at them).
    (tmp_path / "chatty.py").write_text(
        "import sys\n"
        "def job(j):\n"
        "    print('said by print')\n"
        "    sys.stderr.write('said on stderr\\n')\n"
        "    return b'ok'\n"
    )
    up = FarmUp(tmp_path, '[functions.chatty]\ntarget = "chatty:job"\nworkers = 1\n', start=False)
    text = up.config.read_text()
    up.config.write_text(text.replace("[supervisor]\n", '[supervisor]\nlog_format = "json"\n'))
    up.start()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"chatty": 1})
        client = Client(up.addr)
        try:
            assert client.call("chatty", "", timeout=10) == b"ok"
        finally:
            client.close()

        # Two writes on the worker's pipe, read by the supervisor as they come: it may have
        # logged the first and not yet the second when the call returns (a loaded box). The
        # wait is for both lines, not for either (it returned with one, and failed).
        def both_lines() -> list[str] | None:
            said = [
                line
                for line in up.read_log().splitlines()
                if "said by print" in line or "said on stderr" in line
            ]
            return said if len(said) >= 2 else None

        said = wait_for("both lines", both_lines, 10)
        records = [json.loads(line) for line in said]
        # One pipe for both, relayed as read: in the order the job wrote them.
        assert [(r["level"], r["function"], r["slot"]) for r in records] == [
            ("INFO", "chatty", 0),
            ("WARNING", "chatty", 0),
        ], records
    finally:
        assert up.stop() == 0


def test_farm_up_verbose_tells_each_python_workers_start_and_service(tmp_path: Path) -> None:
    # docs/operations.md: `farm up -v` tells each worker's events; for Python workers it
    # added no line at all (only command pools' said "serves").
    pool = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 2\n'
    up = FarmUp(tmp_path, pool, start=False)
    up.up_args = ["-v"]
    up.start()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2})
        pids = sorted(row["pid"] for row in up.workers("reverse"))
        log = up.read_log()
    finally:
        assert up.stop() == 0
    for pid in pids:
        assert re.search(rf"DEBUG worker reverse#\d cpu\d+ \(pid {pid}\) started", log), log
        assert re.search(rf"DEBUG worker reverse#\d cpu\d+ \(pid {pid}\) serves", log), log
