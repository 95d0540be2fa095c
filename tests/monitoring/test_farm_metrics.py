"""farm up's one metrics endpoint: the supervisor's own numbers and the server's, from a
real farm, with a worker crash and a recycle counted by cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import farm
from tests.helpers import scraping
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.scraping import Samples, get
from tests.helpers.servers import need, start_farm_server
from tests.helpers.waiting import wait_for

POOLS = """
[functions.reverse]
target = "tests.helpers.serving:reverse"
workers = 2
max_jobs = 2
"""


MONITORED = """
[functions.mon]
target = "tests.helpers.monitored:work"
workers = 1
"""


def scrape(up: FarmUp) -> Samples:
    return scraping.scrape(up.metrics_url)


@pytest.mark.timeout(90)
def test_one_endpoint_shows_pools_slots_restarts_and_the_servers_jobs(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2})
        first = scrape(up)
        assert get(first, "farm_pool_target_workers", pool="reverse") == 2
        assert get(first, "farm_pool_processes", pool="reverse", state="idle") == 2
        assert get(first, "farm_server_up") == 1
        assert {get(first, "farm_worker_core", pool="reverse", slot=s) for s in "01"} <= set(
            range(os.cpu_count() or 1)
        )
        assert get(first, "farm_worker_rss_bytes", pool="reverse", slot="0") > 1 << 20
        # Each cause is there at 0 before any restart: a counter's first sample is where
        # rate() and increase() start, so one born at 1 hides the pool's first crash.
        for cause in ("crash", "boot_failure", "timeout", "recycle", "rss", "killed"):
            labels = (("cause", cause), ("pool", "reverse"))
            assert first.get(("farm_pool_restarts_total", labels)) == 0, cause
        # So is each state: an alert on "no idle worker left" needs the series at 0.
        for state in ("starting", "busy", "draining", "killing", "running", "backoff", "failing"):
            labels = (("pool", "reverse"), ("state", state))
            assert first.get(("farm_pool_processes", labels)) == 0, state

        with farm.Client(up.addr) as client:
            for text in ("abc", "def", "ghi", "jkl"):
                assert client.call("reverse", text) == text[::-1].encode()
        # Both workers have run max_jobs and are on their way out: kill a replacement, so
        # the kill cannot land on one that exits (a recycle) on its own.
        crashed = wait_for(
            "a fresh worker",
            lambda: next((r["pid"] for r in up.workers("reverse", "idle") if r["jobs"] < 2), None),
            timeout=30,
        )
        os.kill(crashed, signal.SIGKILL)

        def counted() -> dict | None:
            m = scrape(up)
            recycled = get(m, "farm_pool_restarts_total", pool="reverse", cause="recycle")
            crashes = get(m, "farm_pool_restarts_total", pool="reverse", cause="crash")
            return m if recycled >= 1 and crashes == 1 else None

        metrics = wait_for("a recycle and a crash counted", counted, timeout=30)
        done = sum(
            get(metrics, "farm_jobs_completed_total", function="reverse", priority=p)
            for p in ("high", "normal", "low")
        )
        assert done == 4, "the server's counters come through the supervisor's endpoint"
        assert get(metrics, "farm_job_run_seconds_count", function="reverse") == 4
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_a_scrape_sees_each_workers_jobs_as_farm_ps_does(tmp_path: Path) -> None:
    # The collector took a slot's jobs done and busy or idle from what the supervisor's loop
    # last read of the worker's record, up to a second before (farm ps reads it afresh): a
    # scrape right after jobs ran counted none of them, and a worker on a job was "idle".
    up = FarmUp(tmp_path, MONITORED)
    held = tmp_path / "held"
    held.mkdir()
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"mon": 1})
        with farm.Client(up.addr) as client:
            for _ in range(3):
                assert client.call("mon", "ok") == b"ko"
        m = scrape(up)
        (row,) = up.workers("mon")
        assert get(m, "farm_worker_jobs_total", pool="mon", slot="0") == row["jobs"] == 3
        with farm.Client(up.addr) as client:
            job = client.submit("mon", f"hold:{held}")
            wait_for("the job to start", lambda: any(held.glob("started-*")))
            m = scrape(up)
            assert get(m, "farm_pool_processes", pool="mon", state="busy") == 1
            assert get(m, "farm_pool_processes", pool="mon", state="idle") == 0
            (held / "go").touch()
            assert client.wait(job, timeout=30) == b"held"
    finally:
        up.stop()


@pytest.mark.timeout(60)
def test_port_zero_takes_a_free_port_and_farm_ps_json_says_which(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, POOLS, start=False)
    text = up.config.read_text()
    up.config.write_text(text.replace(f"127.0.0.1:{up.metrics_port}", "127.0.0.1:0"))
    up.start()
    try:
        up.expect_notify("READY=1")
        run = subprocess.run(
            [sys.executable, "-m", "farm.cli", "ps", "--json", "-c", str(up.config)],
            capture_output=True,
            text=True,
            timeout=30,
            env=up.env,
        )
        assert run.returncode == 0, run.stderr
        (supervisor,) = [r for r in json.loads(run.stdout) if r["function"] == "supervisor"]
        host, _, port = supervisor["metrics"].rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        up.metrics_port = int(port)
        assert get(scrape(up), "farm_pool_target_workers", pool="reverse") == 2
        # Only /metrics, as the job server's endpoint: a scrape path mistyped in
        # Prometheus's config (/metric, /) read as a healthy target.
        base = f"http://127.0.0.1:{port}"
        for path, method, code in [("/", "GET", 404), ("/metric", "GET", 404)] + [
            ("/metrics", "POST", 405),
            ("/metrics", "GET", 200),
        ]:
            asked = urllib.request.Request(base + path, method=method, data=None)
            try:
                with urllib.request.urlopen(asked, timeout=30) as reply:
                    answered = reply.status
            except urllib.error.HTTPError as exc:
                answered = exc.code
            assert answered == code, (path, method)
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_idle_connections_to_the_endpoint_neither_pile_up_threads_nor_block_scrapes(
    tmp_path: Path,
) -> None:
    # prometheus_client's server gave each connection a thread with no timeout: any local
    # user's idle connections grew the supervisor by a thread each. Bounded, they must not
    # keep Prometheus out either: a new connection takes the place of the oldest one whose
    # request is unfinished, however young (a user reopening them faster than once a second
    # kept every scrape out while only connections older than a second could be replaced).
    import socket

    import psutil

    from farm.slowreuse import MAX_SCRAPERS

    up = FarmUp(tmp_path, POOLS)
    idle: list[socket.socket] = []
    try:
        up.expect_notify("READY=1")
        supervisor = psutil.Process(up.proc.pid)
        before = supervisor.num_threads()

        def hold(count: int) -> None:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", up.metrics_port))
                sock.sendall(b"G")  # a request begun, never finished
                idle.append(sock)

        hold(MAX_SCRAPERS)
        # (a thread of the supervisor's own may come and go beside them: a margin of 4)
        taken = before + MAX_SCRAPERS - 4
        wait_for("the slots taken", lambda: supervisor.num_threads() >= taken)
        for _ in range(3):
            assert get(scrape(up), "farm_pool_target_workers", pool="reverse") == 2
            hold(1)  # the place the scrape took, taken back at once
        assert supervisor.num_threads() <= before + MAX_SCRAPERS
    finally:
        for sock in idle:
            sock.close()
        up.stop()


# A target whose import waits for a file: a deploy's new process stays `starting` until
# the test lets it load (a model that takes long to load, in production).
GATED = """
import os
import time

while not os.path.exists(os.environ["FARM_TEST_GATE"]):
    time.sleep(0.05)

def run(job):
    return job.data
"""


@pytest.mark.timeout(90)
def test_a_deploys_new_process_is_counted_while_it_starts(tmp_path: Path) -> None:
    # `farm ps` listed the successor `farm restart` starts beside each old process, and
    # farm_pool_processes left it out: a deploy of a slow-loading pool showed no process
    # starting, and the endpoint disagreed with `farm ps` on how many processes there are.
    gate = tmp_path / "gate"
    gate.touch()
    (tmp_path / "gated.py").write_text(GATED)
    pool = '[functions.gated]\ntarget = "gated:run"\nworkers = 1\n'
    up = FarmUp(tmp_path, pool, extra_env={"FARM_TEST_GATE": str(gate)})
    restart = None
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"gated": 1})
        gate.unlink()
        restart = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "restart", "--control", up.control],
            env=up.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def both() -> list[dict] | None:
            rows = up.workers("gated")
            return rows if len(rows) == 2 else None

        rows = wait_for("the new process starting beside the old one", both)
        assert sorted(r["state"] for r in rows) == ["idle", "starting"]
        metrics = scrape(up)
        assert get(metrics, "farm_pool_processes", pool="gated", state="idle") == 1
        assert get(metrics, "farm_pool_processes", pool="gated", state="starting") == 1
        # The slot's process dies twice meanwhile (the second time the slot waits out a
        # backoff, empty): the new one still starts beside it, in both views (its row and
        # its count went with the slot's process).
        (new,) = [r["pid"] for r in rows if r["state"] == "starting"]
        for _ in range(2):
            (old,) = [r["pid"] for r in up.workers("gated") if r["pid"] not in (0, new)]
            os.kill(old, signal.SIGKILL)
            wait_for("it reaped", lambda pid=old: pid not in [r["pid"] for r in up.workers()])

        def in_backoff() -> list[dict] | None:
            rows = up.workers("gated")
            return rows if any(r["state"] == "backoff" for r in rows) else None

        rows = wait_for("the slot in backoff", in_backoff)
        assert [r["state"] for r in rows if r["pid"] == new] == ["starting"], rows
        metrics = scrape(up)
        assert get(metrics, "farm_pool_processes", pool="gated", state="backoff") == 1
        assert get(metrics, "farm_pool_processes", pool="gated", state="starting") == 1
        gate.touch()
        assert restart.wait(60) == 0
    finally:
        gate.touch()
        if restart is not None and restart.poll() is None:
            restart.kill()
            restart.wait()
        up.stop()


@pytest.mark.timeout(90)
def test_a_command_workers_cpu_counts_the_children_that_ran_its_jobs(tmp_path: Path) -> None:
    # `gearman -w -- CMD` runs each job in a child it waits for: the pool's CPU read 0.0
    # under load, as only the gearman process's own CPU was counted.
    gearman = need("gearman")
    burn = "import time\nwhile time.process_time() < 0.4: pass\nprint('burnt')"
    up = FarmUp(tmp_path, "", start=False)
    up.write_config(
        f"""
        [functions.cli]
        command = ["{gearman}", "-w", "-h", "127.0.0.1", "-p", "{up.port}", "-f", "burn",
                   "--", "{sys.executable}", "-c", "{burn.encode("unicode_escape").decode()}"]
        function = "burn"
        workers = 1
        stop_signal = "SIGINT"
        graceful_timeout = 3
        """
    )
    up.start()
    try:
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            for _ in range(2):
                assert client.call("burn", b"", timeout=30) == b"burnt\n"
        # Two children of 0.4 s each, read at the kernel's 10 ms ticks (0.7999... once);
        # without them the gearman process itself has used a few ticks at most.
        used = get(scrape(up), "farm_worker_cpu_seconds_total", pool="cli", slot="0")
        assert used >= 0.6, used
    finally:
        assert up.stop() == 0


@pytest.mark.timeout(90)
def test_a_farm_of_remote_servers_only_has_no_server_to_call_down(tmp_path: Path) -> None:
    # With `servers` and no local server, every scrape said farm_server_up 0: the shipped
    # FarmServerDown (critical) fired for good on every host of a shared-servers setup,
    # and `farm top` showed each function's numbers as 0, where it has none to show.
    remote = start_farm_server()
    up = FarmUp(tmp_path, POOLS, supervisor=f'servers = ["{remote.addr}"]')
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2})
        samples = scrape(up)
        assert get(samples, "farm_pool_target_workers", pool="reverse") == 2
        names = {name for name, _ in samples}
        assert "farm_server_up" not in names, sorted(names)
        assert not any(name.startswith("farm_jobs_") for name in names), sorted(names)
        top = farm_cli("top", "--once", "--control", up.control)
        assert top.returncode == 0, top.stderr
        (row,) = [line for line in top.stdout.splitlines() if line.startswith("reverse ")]
        assert row.split()[1:4] == ["-", "-", "-"], top.stdout  # queued, running, workers
        assert "did not answer" not in top.stdout, top.stdout
    finally:
        up.stop()
        remote.stop()


OTHER = """
[functions.other]
target = "tests.helpers.serving:reverse"
workers = 1
"""


@pytest.mark.timeout(120)
def test_a_pool_removed_by_a_reload_takes_its_series_with_it(tmp_path: Path) -> None:
    # Its restarts, target and every state at 0 stayed on the endpoint until the farm
    # stopped, and a pool of the same name added later counted on from its old restarts.
    pool_series = ("farm_pool_target_workers", "farm_pool_processes", "farm_pool_restarts_total")
    up = FarmUp(tmp_path, POOLS + OTHER)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 2, "other": 1})
        os.kill(up.workers("reverse")[0]["pid"], signal.SIGKILL)
        wait_for(
            "the crash counted",
            lambda: get(scrape(up), "farm_pool_restarts_total", pool="reverse", cause="crash"),
            timeout=30,
        )
        both = up.config.read_text()
        up.config.write_text(both.replace(POOLS, ""))
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_for("the pool's workers drained", lambda: not up.workers("reverse"), timeout=30)
        gone = scrape(up)
        for name in pool_series:
            assert scraping.series(gone, name, "pool") == {"other"}, name
        for name in ("farm_worker_core", "farm_worker_rss_bytes", "farm_worker_jobs_total"):
            assert scraping.series(gone, name, "pool") <= {"other"}, name

        up.config.write_text(both)
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 0, out.stdout + out.stderr
        up.wait_idle({"reverse": 2, "other": 1})
        back = scrape(up)
        assert get(back, "farm_pool_target_workers", pool="reverse") == 2
        for cause in ("crash", "boot_failure", "timeout", "recycle", "rss", "killed"):
            labels = (("cause", cause), ("pool", "reverse"))
            assert back.get(("farm_pool_restarts_total", labels)) == 0, "a new pool's " + cause
    finally:
        up.stop()
