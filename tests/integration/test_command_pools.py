"""Command pools under `farm up`: the seed's PHP worker, Perl and `gearman -w` as pinned,
restarted, scaled pools (docs/operations.md, "Command pools").

PHP, Perl and the gearman CLI are skipped when absent, and fail instead under
FARM_REQUIRE_INTEROP=1, as in tests/interop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from farm.client import Client
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import need, php, skip_or_fail
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

SEED_WORKER = ROOT / "workers" / "php" / "worker.php"
PERL_WORKER = ROOT / "workers" / "perl" / "reverse.pl"
PHP_CLIENT = (
    '$c = new GearmanClient(); $c->addServer(); echo $c->doNormal("reverse", "Hello World!");'
)


def port_4730_free() -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 4730))
        except OSError:
            return False
    return True


def farm_on_4730(tmp_path: Path, functions: str) -> FarmUp:
    """The seed's worker connects to 127.0.0.1:4730 and reads no settings: so does the farm."""
    if not port_4730_free():
        skip_or_fail("the seed's PHP worker needs 127.0.0.1:4730, which is taken here")
    up = FarmUp(tmp_path, functions, start=False)
    up.port = 4730
    up.write_config(functions)
    up.start()
    return up


def pool_rows(up: FarmUp, pool: str, state: str = "running") -> list[dict]:
    return [r for r in up.workers(pool) if r["state"] == state]


@pytest.mark.serial  # port 4730, which the seed's worker connects to
def test_the_seeds_php_worker_is_a_pinned_restarted_scaled_pool(tmp_path: Path) -> None:
    php()
    up = farm_on_4730(
        tmp_path,
        f"""
        [functions.reverse]
        command = ["php", "{SEED_WORKER}"]
        workers = 2
        graceful_timeout = 5
        """,
    )
    try:
        up.expect_notify("READY=1")
        rows = wait_for(
            "2 running PHP workers",
            lambda: len(pool_rows(up, "reverse")) == 2 and up.workers("reverse"),
        )
        for row in rows:  # each pinned to its slot's core, before PHP ran a line
            assert psutil.Process(row["pid"]).cpu_affinity() == [row["cpu"]]
            assert psutil.Process(row["pid"]).name().startswith("php")
        out = subprocess.run([php(), "-r", PHP_CLIENT], capture_output=True, text=True, timeout=20)
        assert out.stdout == "!dlroW olleH", out.stderr
        submitted = farm_cli("submit", "reverse", "Hello World!", "--server", up.addr)
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "!dlroW olleH"

        victim = rows[0]
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> dict | None:
            now = [r for r in pool_rows(up, "reverse") if r["slot"] == victim["slot"]]
            return now[0] if now and now[0]["pid"] != victim["pid"] else None

        new = wait_for("a new PHP worker in the killed one's slot", replaced)
        assert new["cpu"] == victim["cpu"]
        assert psutil.Process(new["pid"]).cpu_affinity() == [victim["cpu"]]

        # Scale up and back down while jobs stream: none fails (a job a stopped PHP worker
        # held is requeued by the server and runs on another).
        failures: list[BaseException] = []
        done = [0]
        halt = threading.Event()

        def stream() -> None:
            with Client(up.addr) as client:
                while not halt.is_set():
                    try:
                        assert client.call("reverse", "abc", timeout=20) == b"cba"
                        done[0] += 1
                    except BaseException as e:  # reported below
                        failures.append(e)
                        return

        thread = threading.Thread(target=stream)
        thread.start()
        try:
            assert farm_cli("scale", "reverse=4", "--control", up.control).returncode == 0
            wait_for("4 running", lambda: len(pool_rows(up, "reverse")) == 4, 20)
            assert farm_cli("scale", "reverse=1", "--control", up.control).returncode == 0
            wait_for("1 PHP worker left", lambda: len(up.workers("reverse")) == 1, 20)
        finally:
            halt.set()
            thread.join(30)
        assert not failures, failures
        assert done[0] > 0
        assert "crashed" not in up.read_log().split("scaling reverse from 2 to 4")[-1]
    finally:
        assert up.stop() == 0


def test_perl_and_gearman_cli_workers_are_pools_too(tmp_path: Path) -> None:
    perl = need("perl")
    if subprocess.run([perl, "-MGearman::Worker", "-e", "1"]).returncode != 0:
        need("perl-Gearman-Worker (Debian: libgearman-client-perl)")
    need("gearman")
    up = FarmUp(tmp_path, "", start=False)
    functions = f"""
        [functions.perl]
        command = ["perl", "{PERL_WORKER}"]
        function = "perlrev"
        workers = 1

        [functions.cli]
        command = "gearman -w -h 127.0.0.1 -p {up.port} -f clirev -- rev"
        function = "clirev"
        workers = 1
        stop_signal = "SIGINT"
        graceful_timeout = 3
        """
    up.write_config(functions)  # the gearman CLI takes -h and -p, not $FARM_SERVERS
    up.start()
    try:
        up.expect_notify("READY=1")
        wait_for("both running", lambda: pool_rows(up, "perl") and pool_rows(up, "cli"), 20)
        with Client(up.addr) as client:
            assert client.call("perlrev", "Hello World!", timeout=20) == b"!dlroW olleH"
            assert client.call("clirev", "Hello World!\n", timeout=20) == b"!dlroW olleH\n"
    finally:
        assert up.stop() == 0


def test_a_command_worker_learns_its_place_and_its_output_is_logged(tmp_path: Path) -> None:
    script = tmp_path / "talk.sh"
    script.write_text(
        "echo servers=$FARM_SERVERS function=$FARM_FUNCTION slot=$FARM_SLOT cpu=$FARM_CPU"
        " id=$FARM_WORKER_ID extra=$EXTRA\n"
        "echo to-stderr >&2\n"
        "exec sleep 600\n"
    )
    up = FarmUp(
        tmp_path,
        f"""
        [functions.talk]
        command = ["sh", "{script}"]
        functions = ["a", "b"]
        workers = 1
        env = {{ EXTRA = "yes" }}
        graceful_timeout = 1
        """,
    )
    try:  # no READY=1: that waits for every worker to connect, and this one never does
        log = wait_for(
            "its output in the log", lambda: "to-stderr" in up.read_log() and up.read_log()
        )
        cpu = up.workers("talk")[0]["cpu"]
        assert (
            f"worker talk#0 cpu{cpu} (pid" in log
            and f"servers={up.addr} function=a,b slot=0 cpu={cpu} id=farm:talk#0:0 extra=yes" in log
        ), log
        # it never connects: "starting", and `farm stop` still ends it (SIGTERM kills sh)
        assert up.workers("talk")[0]["state"] == "starting"
    finally:
        assert up.stop() == 0


def test_a_slot_made_again_counts_its_processes_on(tmp_path: Path) -> None:
    # Scaled down and up, a slot was made anew and its next process got the id of the first
    # one again: what that one had detached lived on as the new one's (farm.pools.strays).
    script = tmp_path / "say.sh"
    script.write_text("echo id=$FARM_WORKER_ID\nexec sleep 600\n")
    up = FarmUp(
        tmp_path,
        f"""
        [functions.say]
        command = ["sh", "{script}"]
        workers = 1
        graceful_timeout = 1
        """,
    )
    try:
        wait_for("the first id", lambda: "id=farm:say#0:0" in up.read_log())
        assert farm_cli("scale", "say=0", "--control", up.control).returncode == 0
        wait_for("it gone", lambda: not up.workers("say"))
        assert farm_cli("scale", "say=1", "--control", up.control).returncode == 0
        wait_for("the next id", lambda: "id=farm:say#0:1" in up.read_log())
    finally:
        assert up.stop() == 0


def test_names_a_function_served_by_two_pools_is_ambiguous(tmp_path: Path) -> None:
    up = FarmUp(
        tmp_path,
        """
        [functions.rev_a]
        target = "workers.text:reverse"
        function = "reverse"
        workers = 1

        [functions.rev_b]
        target = "workers.text:reverse"
        function = "reverse"
        workers = 1

        [functions.up]
        target = "workers.text:upper"
        function = "shout"
        workers = 1
        """,
    )
    try:
        up.expect_notify("READY=1")
        with Client(up.addr) as client:
            assert client.call("reverse", "ab", timeout=10) == b"ba"
            assert client.call("shout", "ab", timeout=10) == b"AB"
        bad = farm_cli("scale", "reverse=2", "--control", up.control)
        assert bad.returncode == 2
        assert bad.stderr.strip() == (
            "farm: function 'reverse' is served by pools rev_a, rev_b; name one of them"
        )
        good = farm_cli("scale", "shout=2", "--control", up.control)  # one pool serves it
        assert good.returncode == 0, good.stderr
        assert "up=2" in good.stdout
    finally:
        assert up.stop() == 0


def test_a_command_worker_that_never_connects_does_not_hold_back_ready(tmp_path: Path) -> None:
    # A command worker serves once it connects; one that never does (its server down, a
    # wrapper whose child holds the connection) kept READY=1 from systemd for ever, and
    # TimeoutStartSec= then killed the farm every minute.
    up = FarmUp(
        tmp_path,
        '[functions.quiet]\ncommand = ["sleep", "300"]\nworkers = 1\n',
        supervisor="ready_wait = 2",  # 10 s by default: the same wait, sooner over
    )
    try:
        up.expect_notify("READY=1", timeout=40)
        up.expect_notify("STATUS=0/1 workers up, 1 not connected")
        assert "has not connected to the job server after 2s; READY=1 sent" in up.read_log()
    finally:
        assert up.stop() == 0


def test_what_a_wrapper_started_goes_with_it(tmp_path: Path) -> None:
    # `sh -c "php worker.php; ..."`: the shell forks the worker and passes no signal on.
    # Killed, it left the worker serving on, orphaned, beside the slot's next process; a
    # stop signal reached only the shell.
    wrapper = '["sh", "-c", "sleep 300; echo done"]'
    up = FarmUp(tmp_path, f"[functions.wrapped]\ncommand = {wrapper}\nworkers = 1\n")
    try:
        up.expect_notify("STATUS=0/1 workers up", timeout=20)
        (row,) = wait_for("the wrapper", lambda: up.workers("wrapped"))
        shell = psutil.Process(row["pid"])
        (inner,) = wait_for("the wrapped process", shell.children)
        os.kill(shell.pid, signal.SIGKILL)
        wait_for("the wrapped process gone with its shell", lambda: not inner.is_running())
        (row,) = wait_for(
            "the slot's next wrapper",
            lambda: [r for r in up.workers("wrapped") if r["pid"] not in (None, shell.pid)],
        )
        (inner,) = wait_for("its wrapped process", psutil.Process(row["pid"]).children)
    finally:
        assert up.stop() == 0
    wait_for("the wrapped process stopped with the farm", lambda: not inner.is_running())


def test_restart_replaces_a_command_worker_that_has_not_connected(tmp_path: Path) -> None:
    # It was counted as replaced ("1/1 replaced") and went on as it was, same pid.
    up = FarmUp(
        tmp_path,
        '[functions.quiet]\ncommand = ["sleep", "300"]\nworkers = 1\n',
        supervisor="ready_wait = 2",  # 10 s by default: the same wait, sooner over
    )
    try:
        up.expect_notify("STATUS=0/1 workers up, 1 not connected", timeout=40)  # 2 s on
        (before,) = wait_for("the worker", lambda: [r for r in up.workers("quiet") if r["pid"]])
        out = farm_cli("restart", "quiet", "--control", up.control)
        assert out.returncode == 0 and "1/1 replaced" in out.stdout, (out.stdout, out.stderr)
        wait_for("the old process gone", lambda: not psutil.pid_exists(before["pid"]))
        wait_for(
            "a new one in its slot",
            lambda: [r for r in up.workers("quiet") if r["pid"] not in (None, before["pid"])],
        )
    finally:
        assert up.stop() == 0


def test_a_wrapped_worker_drains_on_its_stop_signal(tmp_path: Path) -> None:
    # The stop signal goes to the group; the shell dies of it at once, and the worker it
    # started must still have its graceful_timeout (the group was killed with the shell).
    (tmp_path / "inner.py").write_text(
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "asked = []\n"
        "signal.signal(signal.SIGTERM, lambda *_: asked.append(1))\n"
        "Path(sys.argv[1], 'up').touch()\n"
        "while not asked:\n"
        "    time.sleep(0.05)\n"
        "time.sleep(1)  # finishing its job\n"
        "Path(sys.argv[1], 'drained').touch()\n"
    )
    wrapper = f'["sh", "-c", "{sys.executable} inner.py {tmp_path}; echo done"]'
    up = FarmUp(tmp_path, f"[functions.wrapped]\ncommand = {wrapper}\nworkers = 1\n")
    try:
        up.expect_notify("STATUS=0/1 workers up", timeout=20)
        wait_for("the wrapped worker", (tmp_path / "up").exists, timeout=20)
        up.signal(signal.SIGTERM)  # farm stop (FarmUp.stop would kill what is left at once)
        assert up.proc.wait(30) == 0
        wait_for("the wrapped worker to finish its job", (tmp_path / "drained").exists)
    finally:
        up.stop()
