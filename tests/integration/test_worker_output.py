"""A Python worker's stdout and stderr under `farm up`: through the supervisor, within the
budget command workers have, so one printing in a loop cannot flood the journal
(docs/operations.md, "When things go wrong")."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import threading
from pathlib import Path

import pytest

import farm
from farm.pools.outputlimit import OUTPUT_BURST, OUTPUT_RATE
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

FLOOD = 50_000

PRINTER = """
import os, sys

def flood(job):
    for n in range(int(job.data)):
        print("spam", n)
    print("Fatal error: out of spam", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)

def talk(job):
    for n in range(250):
        print("line", n)
    return b"said"

def gush(job):
    chunk = b"gush\\n" * 20_000  # 100 kB at a time, past the budget at once
    for _ in range(int(job.data)):
        os.write(1, chunk)
    return b"done"

def warn(job):
    print("careful", file=sys.stderr)
    return b"warned"
"""


def test_a_python_worker_printing_in_a_loop_is_cut_to_its_budget(tmp_path: Path) -> None:
    # A job that printed in a loop wrote to the journal directly: nothing limited it, and
    # journald's rate limit then dropped the farm's own warnings.
    (tmp_path / "printer.py").write_text(textwrap.dedent(PRINTER))
    up = FarmUp(
        tmp_path,
        """
        [functions.flood]
        target = "printer:flood"
        workers = 1

        [functions.talk]
        target = "printer:talk"
        workers = 1
        """,
    )
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"flood": 1, "talk": 1})
        pid = up.workers("flood")[0]["pid"]
        with farm.Client(up.addr) as client:
            client.submit("flood", str(FLOOD).encode(), background=True)
            assert client.call("talk", b"", timeout=30) == b"said"
        crash = wait_for(
            "the flood's crash",
            lambda: re.search(
                rf"worker flood#0 cpu\d+ \(pid {pid}, up ([\d.]+)s.*crashed in job .*",
                up.read_log(),
            ),
            30,
        )
        # The talker's lines come through a pipe of their own, read as they come: its last
        # one may be read after the flood's crash is logged.
        wait_for(
            "the talk's last line",
            lambda: re.search(r"talk#0\[\d+\] INFO line 249\n", up.read_log()),
        )
        log = up.read_log()
        lived = float(crash.group(1))
        # Its last words are quoted though the flood before them was dropped.
        assert "its last output: '" in crash.group(0), crash.group(0)
        assert "Fatal error: out of spam'" in crash.group(0), crash.group(0)
        logged = len(re.findall(rf"flood#0\[{pid}\] INFO spam \d+\n", log))
        dropped = sum(
            int(n)
            for n in re.findall(
                rf"WARNING worker flood#0 cpu\d+ \(pid {pid}\): (\d+) lines of output dropped"
                rf" in [\d.]+s \(more than {OUTPUT_BURST} at once or {OUTPUT_RATE:g} a second\)",
                log,
            )
        )
        assert logged <= OUTPUT_BURST + OUTPUT_RATE * (lived + 1), logged
        fatal = log.count(f"flood#0[{pid}] WARNING Fatal error: out of spam\n")
        assert logged + fatal + dropped >= FLOOD + 1  # every line is logged or counted
        # A worker that says a little is heard in full, in its own words and format.
        talked = [line for line in log.splitlines() if re.search(r"talk#0\[\d+\] INFO line", line)]
        assert [line.rsplit(" ", 1)[1] for line in talked] == [str(n) for n in range(250)]
        assert not re.search(r"worker talk#0 .* lines of output dropped", log)
    finally:
        up.stop()


def test_a_python_workers_lines_keep_their_priority_for_the_journal(tmp_path: Path) -> None:
    # Written to the journal by the worker itself, a line began with its priority (<4> for
    # a warning), so `journalctl -p warning` found it; relayed by the supervisor, the worker
    # is told its lines still go there (--journal), as its own stderr no longer does.
    (tmp_path / "printer.py").write_text(textwrap.dedent(PRINTER))
    up = FarmUp(tmp_path, '[functions.warn]\ntarget = "printer:warn"\nworkers = 1\n', start=False)
    log = os.fstat(up.log.fileno())
    up.env["JOURNAL_STREAM"] = f"{log.st_dev}:{log.st_ino}"  # the supervisor's stderr
    up.start()
    try:
        up.expect_notify("READY=1")
        with farm.Client(up.addr) as client:
            assert client.call("warn", b"", timeout=30) == b"warned"
        line = wait_for(
            "the worker's warning",
            lambda: re.search(r"(?m)^.*warn#0\[\d+\] WARNING careful$", up.read_log()),
        )
        assert line.group(0).startswith("<4>"), line.group(0)
    finally:
        up.stop()


def test_a_job_flooding_as_the_farm_stops_still_finishes(tmp_path: Path) -> None:
    # A flood's pipe is read once a pause, its writes waiting meanwhile: the drain at stop
    # must go on reading it, or the job waits on its write until the grace kills it.
    (tmp_path / "printer.py").write_text(textwrap.dedent(PRINTER))
    up = FarmUp(tmp_path, '[functions.gush]\ntarget = "printer:gush"\nworkers = 1\n')
    got: list[bytes | BaseException] = []

    def call() -> None:
        with farm.Client(up.addr) as client:
            try:
                got.append(client.call("gush", b"100", timeout=50))  # 10 MB, ~1 s of flood
            except BaseException as exc:  # what the test reports
                got.append(exc)

    caller = threading.Thread(target=call)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"gush": 1})
        caller.start()
        wait_for("the job to start", lambda: up.workers("gush", "busy"))
        up.signal(signal.SIGTERM)
        assert up.proc.wait(40) == 0
        caller.join(10)
        assert got == [b"done"], up.read_log()[-2000:]
        assert "was killed" not in up.read_log()
    finally:
        up.stop()
