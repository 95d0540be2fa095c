"""A command worker that stops itself after some jobs (PHP's ``while ($w->work()) { if
(++$n >= 100) exit(0); }``) is recycled, not crashed: replaced at once, counted as
``cause="recycle"``, never the failing state; one that exits 0 before any job still is a
crash (docs/operations.md, "Command pools")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import farm
from tests.helpers.farmproc import FarmUp
from tests.helpers.scraping import get, scrape
from tests.helpers.servers import need
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

# What both raw-protocol workers below start with: the server's address, a request
# packet (``pkt``) and a read of one response from the connection ``s`` (``read``).
RAW_PROTOCOL = """\
import os, socket, struct, sys, time
host, port = os.environ["FARM_SERVERS"].split(",")[0].rsplit(":", 1)
def pkt(t, *x):
    b = b"\\0".join(x)
    return b"\\0REQ" + struct.pack(">II", t, len(b)) + b
def read():
    h = b""
    while len(h) < 12:
        h += s.recv(12 - len(h))
    t, n = struct.unpack(">II", h[4:])
    b = b""
    while len(b) < n:
        b += s.recv(n - len(b))
    return t, b
"""

# A raw-protocol worker, as a PHP one is: it says nothing to the supervisor, serves
# argv[1] jobs (GRAB_JOB, PRE_SLEEP while there is none), then exits with argv[2].
SELF_RECYCLING = (
    RAW_PROTOCOL
    + """\
s = socket.create_connection((host, int(port)))
s.sendall(pkt(1, os.environ["FARM_FUNCTION"].split(",")[0].encode()))  # CAN_DO
done = 0
while done < int(sys.argv[1]):
    s.sendall(pkt(9))  # GRAB_JOB
    t, b = read()
    if t == 10:  # NO_JOB
        s.sendall(pkt(4))  # PRE_SLEEP, then wait for the NOOP
        read()
    elif t == 11:  # JOB_ASSIGN
        s.sendall(pkt(13, b.split(b"\\0")[0], b"ok"))  # WORK_COMPLETE
        done += 1
s.close()
sys.exit(int(sys.argv[2]))
"""
)

JOBS_EACH = 3


def restarts(up: FarmUp) -> list[str]:
    """The supervisor's log lines of a worker's end and its restart."""
    return [line for line in up.read_log().splitlines() if "; restarting " in line]


def pool(script: Path, name: str, jobs: int, code: int) -> str:
    return f"""
        [functions.{name}]
        command = ["{sys.executable}", "{script}", "{jobs}", "{code}"]
        workers = 1
        """


@pytest.mark.parametrize("code", [0, 4])
def test_a_command_worker_that_exits_after_its_jobs_is_recycled_not_crashed(
    tmp_path: Path, code: int
) -> None:
    # An exit 0 after 3 jobs was "stopped unasked (exited with code 0)" with "0 jobs": a
    # crash, backed off, the slot "failing" after three, FarmWorkersCrashLooping firing on
    # a pool that served every call.
    script = tmp_path / "recycling.py"
    script.write_text(SELF_RECYCLING)
    up = FarmUp(tmp_path, pool(script, "recycling", JOBS_EACH, code))
    try:
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            for i in range(4 * JOBS_EACH):
                assert client.call("recycling", str(i), timeout=30) == b"ok"
        # An end's log line comes after its count: once four are logged, four are counted.
        ends = wait_for("four ends logged", lambda: len(restarts(up)) >= 4 and restarts(up))
        numbers = scrape(up.metrics_url)
        counted = {"pool": "recycling", "cause": "recycle"}
        assert get(numbers, "farm_pool_restarts_total", **counted) >= 4
        assert get(numbers, "farm_pool_restarts_total", pool="recycling", cause="crash") == 0
        (slot,) = [r for r in up.ps() if r["function"] == "recycling"]
        assert slot["state"] != "failing", slot
        for line in ends[:4]:
            # Each served its 3 (the server's count, read as it ended), replaced at once.
            assert f"{JOBS_EACH} jobs)" in line and "restarting now" in line, line
            assert "was recycled" in line and "crashed" not in line, line
            assert "WARNING" not in line and "failing" not in line, line
    finally:
        up.stop()


def test_a_command_worker_that_exits_0_before_any_job_still_crashes(tmp_path: Path) -> None:
    # No job served: a worker that cannot work (a loop that ends at once), backed off.
    script = tmp_path / "recycling.py"
    script.write_text(SELF_RECYCLING)
    up = FarmUp(tmp_path, pool(script, "idle", 0, 0))
    try:
        line = wait_for(
            "the slot failing",
            lambda: next((r for r in up.read_log().splitlines() if "(slot failing)" in r), None),
        )
        assert "stopped unasked (exited with code 0)" in line and "0 jobs" in line, line
        numbers = scrape(up.metrics_url)
        assert get(numbers, "farm_pool_restarts_total", pool="idle", cause="crash") >= 3
        assert get(numbers, "farm_pool_restarts_total", pool="idle", cause="recycle") == 0
    finally:
        up.stop()


# Serves argv[1] jobs, then takes one more and exits argv[2] holding it.
TAKES_ONE_MORE = SELF_RECYCLING.replace(
    "s.close()\nsys.exit(int(sys.argv[2]))",
    "while True:\n    s.sendall(pkt(9))\n    t, b = read()\n    if t == 11:\n        break\n"
    "    if t == 10:\n        s.sendall(pkt(4)); read()\n"
    "s.close()\nsys.exit(int(sys.argv[2]))",
)


def test_a_command_worker_that_exits_0_holding_a_job_crashed(tmp_path: Path) -> None:
    # Its exit 0 after 2 jobs read as a recycle, though it left its third job to be run
    # again (the server's retry): no clean stop of its own, a crash.
    script = tmp_path / "holding.py"
    script.write_text(TAKES_ONE_MORE)
    up = FarmUp(tmp_path, pool(script, "holding", 2, 0))
    try:
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            for i in range(3):
                client.submit("holding", str(i), background=True)
        (line,) = wait_for("an end logged", lambda: restarts(up)[:1])
        assert "crashed in job: exited with code 0" in line and "recycled" not in line, line
        numbers = scrape(up.metrics_url)
        assert get(numbers, "farm_pool_restarts_total", pool="holding", cause="crash") >= 1
        assert get(numbers, "farm_pool_restarts_total", pool="holding", cause="recycle") == 0
    finally:
        up.stop()


# Two connections: A registers at once (the supervisor's first look at its sockets names
# both), B registers half a second later and does every job; after argv[1] it exits argv[2].
TWO_CONNECTIONS = (
    RAW_PROTOCOL
    + """\
fn = os.environ["FARM_FUNCTION"].split(",")[0].encode()
a = socket.create_connection((host, int(port)))
s = socket.create_connection((host, int(port)))
a.sendall(pkt(1, fn))
time.sleep(0.5)
s.sendall(pkt(1, fn))
a.sendall(pkt(2, fn))  # CANT_DO on A: the jobs go to B
done = 0
while done < int(sys.argv[1]):
    s.sendall(pkt(9))
    t, b = read()
    if t == 10:
        s.sendall(pkt(4)); read()
    elif t == 11:
        s.sendall(pkt(13, b.split(b"\\0")[0], b"ok")); done += 1
s.close(); a.close()
sys.exit(int(sys.argv[2]))
"""
)


def test_the_jobs_of_a_connection_that_registered_after_the_first_look_count(
    tmp_path: Path,
) -> None:
    # The server kept the end of a connection only if it had registered when the supervisor
    # first named it: B's 3 jobs were lost, and its clean exit 0 read as a crash, "0 jobs".
    script = tmp_path / "two.py"
    script.write_text(TWO_CONNECTIONS)
    up = FarmUp(tmp_path, pool(script, "two", JOBS_EACH, 0))
    try:
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            for i in range(JOBS_EACH):
                assert client.call("two", str(i), timeout=30) == b"ok"
        (line,) = wait_for("its end logged", lambda: restarts(up)[:1])
        assert f"was recycled (exited with code 0 after {JOBS_EACH} jobs)" in line, line
    finally:
        up.stop()


QUICK_JOBS = 2
BACKLOG = 20


def test_a_command_worker_quicker_than_its_sockets_are_read_is_recycled(tmp_path: Path) -> None:
    # `gearman -w -c 2` with a backlog: each process took its 2 jobs and exited 0 in a few
    # milliseconds, before the supervisor read its TCP socket, so `served` was asked about
    # pid:N alone, which names no TCP connection: "(up 0.0s, 0 jobs) stopped unasked",
    # the slot failing and backed off to 30 s, the backlog draining 2 jobs a backoff.
    need("gearman")  # the real one: a Python worker's start is too slow to show it surely
    up = FarmUp(tmp_path, "", start=False)
    up.write_config(f"""
        [functions.quick]
        command = ["gearman", "-w", "-c", "{QUICK_JOBS}", "-h", "127.0.0.1", "-p", "{up.port}",
                   "-f", "quick", "--", "cat"]
        workers = 1
        """)
    up.start()
    try:
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            for i in range(BACKLOG):
                client.submit("quick", str(i), background=True)
        # Without a backoff the backlog's 10 processes end in well under this bound; backed
        # off (0, 0, 0.5, 1, 2, 4, 8, 16 s ...) they took over 30 s.
        ends = wait_for(
            "the backlog's workers ended",
            lambda: len(restarts(up)) >= BACKLOG // QUICK_JOBS and restarts(up),
            timeout=20,
        )
        assert "slot failing" not in up.read_log()
        for line in ends:
            assert f"was recycled (exited with code 0 after {QUICK_JOBS} jobs)" in line, line
        numbers = scrape(up.metrics_url)
        assert get(numbers, "farm_pool_restarts_total", pool="quick", cause="crash") == 0
    finally:
        up.stop()
