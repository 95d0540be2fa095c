"""A running farm changed at runtime: `farm scale` under load, SIGHUP, timeouts, recycling."""

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
from tests.helpers.streams import JobStream, running
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(40)

FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1

[functions.hash]
target = "workers.hashing:pbkdf2"
workers = 1
"""


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


def test_sighup_applies_a_changed_config(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, FUNCTIONS)
    try:
        up.expect_notify("READY=1")
        rows = up.wait_idle({"reverse": 1, "hash": 1})
        pids = {r["function"]: r["pid"] for r in rows}
        up.write_config(
            FUNCTIONS.replace("workers = 1", "workers = 2", 1).replace(  # reverse: 1 -> 2
                "workers.hashing:pbkdf2",
                "workers.hashing:compress",  # hash: new target
            )
            + '\n[functions.upper]\ntarget = "workers.text:upper"\nworkers = 1\n'
        )
        up.signal(signal.SIGHUP)
        up.expect_notify("RELOADING=1")
        rows = up.wait_idle({"reverse": 2, "hash": 1, "upper": 1})
        now = {(r["function"], r["slot"]): r["pid"] for r in rows}
        assert now["reverse", 0] == pids["reverse"]  # unchanged pool: not restarted
        assert now["hash", 0] != pids["hash"]  # changed target: replaced
        log = up.read_log()  # the journal says what the reload did, not only what it removed
        assert (
            "reload: reverse from 1 to 2 workers" in log and "reload: upper added: 1 workers" in log
        )
        client = Client(up.addr)
        try:
            assert client.call("upper", "abc", timeout=10) == b"ABC"
            assert client.call("hash", "aaaa", timeout=10).startswith(b"x")  # zlib, not pbkdf2
        finally:
            client.close()
        # a broken config on reload is refused with one line (exit 2, as `farm up` refuses
        # it); the farm keeps running -- also when the file is of a shape the reader did not
        # expect (functions = 3 once raised a TypeError that ended the supervisor)
        good = up.config.read_text()
        for broken in (good + "\n[functions.bad]\nworkers = -1\n", "functions = 3\n"):
            up.config.write_text(broken)
            out = farm_cli("reload", "--control", up.control)
            assert out.returncode == 2 and "functions" in out.stderr, out.stderr
            assert len(out.stderr.strip().splitlines()) == 1
            assert up.wait_idle({"reverse": 2, "hash": 1, "upper": 1})
        # what a reload cannot apply is said, not only logged
        up.config.write_text(good.replace("job_retries = 3", "job_retries = 5"))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0 and out.stdout.strip() == "reloaded", out.stdout
        assert "not applied: [server] changed" in out.stderr, out.stderr
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


def test_reload_with_a_fixed_target_revives_a_failing_slot_at_once(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "raise ImportError('missing dependency')\ndef job(j): ...\n"
    )
    (tmp_path / "fixed.py").write_text("def job(j):\n    return b'fixed'\n")
    up = FarmUp(tmp_path, '[functions.f]\ntarget = "broken:job"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        wait_for("three boot failures", lambda: up.read_log().count("failed to boot") >= 3, 20)
        # The next retry is 8 s away now: a fresh worker that boots and reports idle within
        # 6 s (Python's start on a loaded machine takes a second or two) came from the reload.
        up.write_config('[functions.f]\ntarget = "fixed:job"\nworkers = 1\n')
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stderr
        up.wait_idle({"f": 1}, timeout=6)  # before the failing slot's next retry
        client = Client(up.addr)
        try:
            assert client.call("f", "", timeout=10) == b"fixed"
        finally:
            client.close()
    finally:
        assert up.stop() == 0


def test_reload_to_a_target_that_does_not_boot_keeps_the_old_workers(tmp_path: Path) -> None:
    """A reload replaces a changed pool's workers as `farm restart` does: the new process
    starts beside the old one, and when it does not boot the old one keeps serving and
    `farm reload` exits 1 saying so (it had drained the healthy worker and said "reloaded")."""
    (tmp_path / "good.py").write_text("def job(j):\n    return b'old'\n")
    (tmp_path / "broken.py").write_text("raise ImportError('missing')\ndef job(j): ...\n")
    up = FarmUp(tmp_path, '[functions.f]\ntarget = "good:job"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        (before,) = up.wait_idle({"f": 1})
        up.write_config('[functions.f]\ntarget = "broken:job"\nworkers = 1\n')
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert "the old one" in out.stderr and "stays" in out.stderr, out.stderr
        (row,) = up.workers("f")
        assert row["pid"] == before["pid"] and row["state"] == "idle"
        client = Client(up.addr)
        try:
            assert client.call("f", "", timeout=10) == b"old"
        finally:
            client.close()
        # The farm goes on with what runs: a worker started later (a crash's successor) runs
        # the old target too. It started the one that did not boot, for good.
        os.kill(before["pid"], signal.SIGKILL)
        (after,) = wait_for(
            "a successor", lambda: [r for r in up.workers("f", "idle") if r["pid"] != before["pid"]]
        )
        client = Client(up.addr)
        try:
            assert client.call("f", "", timeout=10) == b"old"
        finally:
            client.close()
        # The same file read again is tried again, and fails again: nothing is drained.
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 1 and "stays" in out.stderr, (out.stdout, out.stderr)
        client = Client(up.addr)
        try:
            assert client.call("f", "", timeout=10) == b"old"  # a drained f could not answer
        finally:
            client.close()
        (row,) = up.workers("f")
        assert row["pid"] == after["pid"] and row["state"] == "idle"
        # Fixed: the next reload replaces it.
        up.write_config('[functions.f]\ntarget = "good:job"\nworkers = 2\n')
        assert farm_cli("reload", "--control", up.control).returncode == 0
        up.wait_idle({"f": 2})
    finally:
        assert up.stop() == 0


def test_reloads_during_a_rollout_never_drain_a_pool_for_an_untried_target(
    tmp_path: Path,
) -> None:
    """A reload while a replacement still boots adds its pools to that rollout: the slot
    whose new process was starting is tried again with the newest target once it took
    over, and a target that does not boot leaves the last one serving. `reload --restart`
    during a rollout applies nothing (it drained pools the rollout did not cover)."""
    (tmp_path / "v1.py").write_text("def job(j):\n    return b'v1'\n")
    (tmp_path / "v2.py").write_text("import time\ntime.sleep(3)\ndef job(j):\n    return b'v2'\n")
    (tmp_path / "v3.py").write_text("raise ImportError('missing')\ndef job(j): ...\n")
    (tmp_path / "g.py").write_text("def job(j):\n    return b'g'\n")
    pools = (
        '[functions.f]\ntarget = "{f}:job"\nworkers = 1\n'
        '[functions.g]\ntarget = "{g}:job"\nworkers = 1\n'
    )
    up = FarmUp(tmp_path, pools.format(f="v1", g="g"))
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"f": 1, "g": 1})
        up.write_config(pools.format(f="v2", g="g"))
        first = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from farm.cli import main; main()",
                "reload",
                "--control",
                up.control,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(
            "v2 booting beside v1", lambda: len([r for r in up.ps() if r["function"] == "f"]) == 2
        )
        up.write_config(pools.format(f="v2", g="v3"))
        refused = farm_cli("reload", "--restart", "--control", up.control)
        assert refused.returncode == 1 and "a restart is under way" in refused.stderr
        up.write_config(pools.format(f="v3", g="g"))
        second = farm_cli("reload", "--control", up.control)
        assert second.returncode == 1 and "stays" in second.stderr, (second.stdout, second.stderr)
        first.communicate(timeout=60)
        client = Client(up.addr)
        try:
            assert client.call("f", "", timeout=10) == b"v2"  # the last target that booted
            assert client.call("g", "", timeout=10) == b"g"  # never drained
        finally:
            client.close()
    finally:
        assert up.stop() == 0


def test_reload_naming_another_file_is_refused_and_the_farm_keeps_its_own(
    tmp_path: Path,
) -> None:
    # `farm reload -c other.toml` said "reloaded" and re-read the farm's own file.
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        other = tmp_path / "other.toml"
        other.write_text(up.config.read_text().replace("workers = 1", "workers = 2"))
        out = farm_cli("reload", "-c", str(other), "--control", up.control)
        assert out.returncode == 2, out.stdout  # a usage mistake: nothing was tried
        assert f"this farm re-reads {up.config}" in out.stderr and "reloaded" not in out.stdout
        out = farm_cli("reload", "-c", str(up.config), "--control", up.control)
        assert out.returncode == 0 and "reloaded" in out.stdout, out.stderr
    finally:
        assert up.stop() == 0


def test_a_reload_names_a_config_given_relative_by_its_whole_path(tmp_path: Path) -> None:
    # `farm up -c farm.toml`: a failed reload said "farm.toml: ...", which names no file
    # for an operator in another directory.
    up = FarmUp(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\n', start=False)
    up.config_arg = "farm.toml"
    up.start()
    try:
        up.expect_notify("READY=1")
        up.config.write_text(up.config.read_text().replace("[supervisor]", "[supervisr]"))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 2, out.stdout  # a config error, as at start
        assert f"{up.config}: supervisr: unknown key" in out.stderr, out.stderr
    finally:
        assert up.stop() == 0


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
