"""A command worker that ends because the local job server died (PHP's ``while
($w->work());`` returns when work() cannot reconnect: GEARMAN_COULD_NOT_CONNECT) lost its
server: no crash, no backoff, started again once the new server answers, as a Python
worker reconnects by itself (docs/operations.md, "Job server died", "Command pools").

Found in a PHP developer's review: each SIGKILL of the server logged every PHP slot
`stopped unasked (exited with code 0) ... restarting in 1s`, backed off, and two deaths
made the slots `failing`, while the farm's Python workers said at INFO that it was back.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import farm
from tests.helpers.farmproc import FarmUp
from tests.helpers.scraping import get, scrape
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

# A raw-protocol worker, as a PHP one is: it serves its pool's function (GRAB_JOB,
# PRE_SLEEP while there is none), taking argv[2] seconds (none if not given) over each job,
# and exits with argv[1] once its connection closes.
ENDS_WITH_ITS_SERVER = """\
import os, socket, struct, sys, time
host, port = os.environ["FARM_SERVERS"].split(",")[0].rsplit(":", 1)
def pkt(t, *x):
    b = b"\\0".join(x)
    return b"\\0REQ" + struct.pack(">II", t, len(b)) + b
def take(n):
    b = b""
    while len(b) < n:
        more = s.recv(n - len(b))
        if not more:  # the server went: what `while ($w->work());` does next
            print("lost the server", flush=True)
            sys.exit(int(sys.argv[1]))
        b += more
    return b
def read():
    t, n = struct.unpack(">II", take(12)[4:])
    return t, take(n)
s = socket.create_connection((host, int(port)))
s.sendall(pkt(1, os.environ["FARM_FUNCTION"].split(",")[0].encode()))  # CAN_DO
while True:
    s.sendall(pkt(9))  # GRAB_JOB
    t, b = read()
    if t == 10:  # NO_JOB
        s.sendall(pkt(4))  # PRE_SLEEP, then wait for the NOOP
        read()
    elif t == 11:  # JOB_ASSIGN
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
        s.sendall(pkt(13, b.split(b"\\0")[0], b"ok"))  # WORK_COMPLETE
"""

KILLS = 3  # FAILING_AFTER crashes in a row made a slot "failing"
#: How long a worker takes over a job: ends well within JOB_SEEN_STALE of the listing
#: taken as it started, which then still counts as fresh.
JOB_SECONDS = 1.0


def serving(up: FarmUp) -> list[dict]:
    """Both slots' workers, once both serve (one look at `farm ps`); else none."""
    rows = up.workers()
    return rows if len(rows) == 2 and all(r["state"] == "running" for r in rows) else []


def call(up: FarmUp, function: str) -> bytes:
    with farm.Client(up.addr) as client:
        return client.call(function, "x", timeout=30)


def ends(up: FarmUp) -> list[str]:
    """The supervisor's log lines of a worker's end and its restart."""
    return [r for r in up.read_log().splitlines() if " worker " in r and "; restarting " in r]


def no_crash_counted(up: FarmUp) -> None:
    """Neither pool's ends were called crashes, in the log or in farm_pool_restarts_total:
    each of its KILLS ends counted as its server lost."""
    log = up.read_log()
    assert "stopped unasked" not in log and "crashed" not in log, log
    numbers = scrape(up.metrics_url)
    for pool in ("zero", "one"):
        assert get(numbers, "farm_pool_restarts_total", pool=pool, cause="crash") == 0
        lost = get(numbers, "farm_pool_restarts_total", pool=pool, cause="server_lost")
        assert lost == KILLS


def test_a_command_worker_that_ends_with_its_server_lost_it_not_crashed(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(ENDS_WITH_ITS_SERVER)
    pools = "".join(
        f'[functions.{name}]\nworkers = 1\ncommand = ["{sys.executable}", "{script}", "{code}"]\n'
        for name, code in (("zero", 0), ("one", 1))  # any exit code: the worker's choice
    )
    up = FarmUp(tmp_path, pools)
    try:
        up.expect_notify("READY=1")
        for kill in range(1, KILLS + 1):
            running = wait_for("both workers serving", lambda: serving(up), timeout=30)
            up.kill_server()
            wait_for(
                "both workers' ends logged",
                lambda kill=kill: len(ends(up)) >= 2 * kill,  # type: ignore[misc]
                timeout=30,
            )
            # Replaced, not kept: each slot's process is a new one.
            again = wait_for("both serving the new server", lambda: serving(up), timeout=30)
            assert {r["pid"] for r in again}.isdisjoint(r["pid"] for r in running)
        with farm.Client(up.addr) as client:
            assert client.call("zero", "x", timeout=10) == b"ok"
            assert client.call("one", "x", timeout=10) == b"ok"
        lines = ends(up)
        assert len(lines) == 2 * KILLS, lines
        for line in lines:
            assert re.search(r" INFO worker (zero|one)#0 cpu\d+ \(pid \d+", line), line
            assert "lost its job server (exited with code " in line, line
            assert "failing" not in line and "restarting in " not in line, line
        no_crash_counted(up)
        assert all(r["state"] == "running" for r in up.workers())
    finally:
        assert up.stop() == 0


def test_a_command_worker_that_ends_unasked_while_its_server_serves_still_crashes(
    tmp_path: Path,
) -> None:
    # The rule above is the server's death's alone: a worker that ends 0 before any job,
    # its server up all along, cannot work (a loop that ends at once), a crash backed off.
    script = tmp_path / "worker.py"
    script.write_text("import sys\nsys.exit(0)\n")
    pool = f'[functions.idle]\nworkers = 1\ncommand = ["{sys.executable}", "{script}"]\n'
    up = FarmUp(tmp_path, pool)
    try:
        line = wait_for(
            "the slot failing",
            lambda: next((r for r in ends(up) if "(slot failing)" in r), None),
        )
        assert "stopped unasked (exited with code 0)" in line, line
        assert "lost its job server" not in up.read_log()
    finally:
        up.stop()


@pytest.mark.parametrize(
    ("stop", "job"),
    [(signal.SIGINT, 0.0), (signal.SIGUSR1, 0.0), (signal.SIGUSR1, JOB_SECONDS)],
    ids=["SIGINT", "SIGUSR1", "SIGUSR1-job-in-hand"],
)
def test_a_command_worker_that_ends_as_its_server_stops_lost_it_not_crashed(
    tmp_path: Path, stop: signal.Signals, job: float
) -> None:
    # A server stopped in order (SIGINT at once, SIGUSR1 gracefully; SIGTERM is left to
    # farm up while it lives) closes its connections before it exits: its workers ended,
    # and were reaped, while it was still alive, counted up, and were judged crashed,
    # restarted "now" against it, and crash-looped to "failing" (found in review).
    # With a job in hand (``job``: each worker takes that long over one), the graceful stop
    # lets the job end, its client gets the result, and then closes the connection: the
    # listing that named the job, taken just before the stop, still read as fresh, and
    # each worker was "crashed in job H:..." though its job had ended (found in review).
    script = tmp_path / "worker.py"
    script.write_text(ENDS_WITH_ITS_SERVER)
    pools = "".join(
        f"[functions.{name}]\nworkers = 1\n"
        f'command = ["{sys.executable}", "{script}", "{code}", "{job}"]\n'
        for name, code in (("zero", 0), ("one", 1))
    )
    up = FarmUp(tmp_path, pools)
    try:
        up.expect_notify("READY=1")
        for stopped in range(1, KILLS + 1):
            running = wait_for("both workers serving", lambda: serving(up), timeout=30)
            with ThreadPoolExecutor(2) as calls:
                results = [calls.submit(call, up, name) for name in ("zero", "one")] if job else []
                if job:  # the supervisor's listing (`farm ps` asks the server's peers)
                    wait_for(
                        "both jobs in hand", lambda: sum(bool(r["job"]) for r in up.workers()) == 2
                    )
                (server,) = [r["pid"] for r in up.ps() if r["function"] == "server"]
                os.kill(server, stop)
                assert [r.result(timeout=30) for r in results] == [b"ok"] * len(results)
            wait_for(
                "both workers' ends logged",
                lambda n=stopped: len(ends(up)) >= 2 * n,  # type: ignore[misc]
                timeout=30,
            )
            for line in ends(up):  # not crashed, nor restarted against the stopping server
                assert "lost its job server (exited with code " in line, line
            again = wait_for("both serving the next server", lambda: serving(up), timeout=30)
            assert {r["pid"] for r in again}.isdisjoint(r["pid"] for r in running)
        lines = ends(up)
        assert len(lines) == 2 * KILLS, lines
        for line in lines:
            assert "failing" not in line and "restarting in " not in line, line
        no_crash_counted(up)
    finally:
        assert up.stop() == 0


def test_a_command_worker_never_seen_serving_crashes_though_its_server_died(
    tmp_path: Path,
) -> None:
    # Its server's death forgives only a worker seen serving it: one that never connected
    # (a crash loop of its own) ends whenever it ends, and the death's timing alone made
    # it "lost its job server" (found in review).
    pool = '[functions.crashy]\nworkers = 1\ncommand = ["sh", "-c", "sleep 5; exit 1"]\n'
    up = FarmUp(tmp_path, pool)
    try:  # no READY=1: it never serves; it starts once the server answers
        wait_for("the server answering", lambda: " accepts on " in up.read_log(), timeout=30)
        (worker,) = wait_for("its worker started", lambda: up.workers("crashy"), timeout=30)
        up.kill_server()
        line = wait_for(
            "its end logged",
            lambda: next((r for r in ends(up) if f"(pid {worker['pid']}," in r), None),
            timeout=30,
        )
        assert "crashed: exited with code 1" in line, line
        assert "lost its job server" not in up.read_log()
        numbers = scrape(up.metrics_url)
        assert get(numbers, "farm_pool_restarts_total", pool="crashy", cause="server_lost") == 0
        assert get(numbers, "farm_pool_restarts_total", pool="crashy", cause="crash") >= 1
    finally:
        up.stop()
