"""A Python worker's stdout and stderr under `farm up`: through the supervisor, within the
budget command workers have, so one printing in a loop cannot flood the journal
(docs/operations.md, "When things go wrong")."""

from __future__ import annotations

import json
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

#: Lines a job writes past its logger, shaped as farm's own: the supervisor's text line
#: and a JSON record of the supervisor's, each written raw and by a child program.
FORGED_TEXT = "2026-12-06 16:44:20,000 farm[22083] ERROR job server (pid 22141) died; forged"
FORGED_JSON = '{"level": "CRITICAL", "role": "supervisor", "pid": 1, "message": "forged"}'

FORGER = f"""
import os, subprocess

def forge(job):
    print("my own line")
    for line in ({FORGED_TEXT!r}, {FORGED_JSON!r}):
        os.write(1, line.encode() + b"\\n")
        subprocess.run(["echo", line], check=True)
    return b"forged"
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_line_a_job_writes_past_its_logger_is_the_workers_not_the_farms(
    tmp_path: Path, log_format: str
) -> None:
    # A job's os.write(1, ...) or a child program's output was relayed as it came: a line
    # shaped as the supervisor's own ("farm[PID] ERROR job server ... died") read as one,
    # and in JSON, any line that parsed as an object passed for a record of the farm's.
    (tmp_path / "forger.py").write_text(FORGER)
    up = FarmUp(tmp_path, '[functions.forge]\ntarget = "forger:forge"\nworkers = 1\n', start=False)
    up.config.write_text(
        up.config.read_text().replace(
            "[supervisor]\n", f'[supervisor]\nlog_format = "{log_format}"\n', 1
        )
    )
    up.start()
    try:
        up.expect_notify("READY=1")
        pid = up.wait_idle({"forge": 1})[0]["pid"]
        with farm.Client(up.addr) as client:
            assert client.call("forge", b"", timeout=30) == b"forged"
    finally:
        assert up.stop() == 0  # its worker's pipe is read to its end before the farm's
    said = rf"worker forge#0 cpu\d+ \(pid {pid}\): "
    if log_format == "text":
        log = up.log_path.read_text().splitlines()
        for forged in (FORGED_TEXT, FORGED_JSON):
            assert forged not in log  # never a line of its own
            quoted = [line for line in log if line.endswith(forged)]
            assert len(quoted) == 2, quoted  # written raw, and by the child: the worker's
            assert all(re.search(rf" farm\[\d+\] INFO {said}", line) for line in quoted)
        # The worker's own records look as they did.
        assert [line for line in log if re.search(rf"forge#0\[{pid}\] INFO my own line$", line)]
        return
    records = [json.loads(line) for line in up.log_path.read_text().splitlines()]
    assert not [r for r in records if r["message"] == "forged"], records
    for forged in (FORGED_TEXT, FORGED_JSON):
        quoted = [r for r in records if r["message"].endswith(forged)]
        assert len(quoted) == 2, quoted
        for record in quoted:
            assert re.fullmatch(said + re.escape(forged), record["message"]), record
            assert (record["logger"], record["function"], record["slot"]) == (
                "farm.worker.output",
                "forge",
                0,
            )
    (own,) = [r for r in records if r["message"] == "my own line"]
    assert (own["role"], own["pid"], own["logger"], own["function"]) == (
        "worker",
        pid,
        "farm.job",
        "forge",
    )


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
