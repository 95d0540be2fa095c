"""A Python worker's log mark under `farm up` (farm.logrelay): its own records are told
from what its jobs write past its logger wherever the mark comes in a line, and a record
longer than the line the supervisor holds (LONGEST_LINE) stays the worker's; the mark, a
secret, is in no line of the log, no last words, no `farm ps` field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import farm
from farm.pools.outputlimit import LONGEST_LINE
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

LONG = 300_000  # a record several cuts long

JOBS = f"""
import logging, os, subprocess

log = logging.getLogger("mine")

def glue(job):
    # A child's output with no newline: the worker's next record follows it on its line.
    subprocess.run(["printf", "child-output-without-newline"], check=True)
    log.error("worker-own-error-record")
    if job.data == b"die":
        subprocess.run(["printf", "child-last-words-without-newline"], check=True)
        log.error("dying-words")
        os._exit(3)
    # The mark, which the test looks for: the worker's, so its jobs may know it.
    return logging.getLogger().handlers[0].formatter.mark.encode()

def long(job):
    log.warning("M" * {LONG} + " END-LONG")
    return b"said"

def forged(job):
    # A job's input in its exception's message: shaped as a text record's header.
    raise ValueError("[1] CRITICAL " + "x" * {LONG} + " END-FORGED")
"""

#: A mark as farm.pools.workerargs makes them: any such run in the log is one leaked.
MARKISH = re.compile(r"[0-9a-f]{32}")


def _farm(tmp_path: Path, log_format: str, pool: str) -> FarmUp:
    (tmp_path / "markjobs.py").write_text(JOBS)
    up = FarmUp(
        tmp_path, f'[functions.{pool}]\ntarget = "markjobs:{pool}"\nworkers = 1\n', start=False
    )
    up.config.write_text(
        up.config.read_text().replace(
            "[supervisor]\n", f'[supervisor]\nlog_format = "{log_format}"\n', 1
        )
    )
    up.start()
    up.expect_notify("READY=1")
    return up


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_record_glued_to_a_childs_unended_output_is_the_workers_and_its_mark_unsaid(
    tmp_path: Path, log_format: str
) -> None:
    # `printf x` in a job, then log.error(...): the record came after the child's text on
    # one line, which did not start with the mark, so the whole line, the mark in plain
    # text, was logged as the worker's stray output (JSON: the ERROR record in an INFO
    # record's message), and quoted so in the last words of its end and in `farm ps`.
    up = _farm(tmp_path, log_format, "glue")
    try:
        pid = up.wait_idle({"glue": 1})[0]["pid"]
        with farm.Client(up.addr) as client:
            mark = client.call("glue", b"", timeout=30).decode()
            client.submit("glue", b"die", background=True)
        assert MARKISH.fullmatch(mark), mark
        crash = wait_for(
            "the worker's crash",
            lambda: re.search(
                rf"worker glue#0 cpu\d+ \(pid {pid}, .*crashed in job.*", up.read_log()
            ),
            30,
        )
        rows = json.dumps(up.ps())
    finally:
        up.stop()
    text = up.log_path.read_text()
    for said in (text, crash.group(0), rows):
        assert mark not in said and not MARKISH.search(said), said[-3000:]
    # Its last words are the record it wrote last, not the child's text before it.
    assert re.search(r"its last output: '.*dying-words", crash.group(0)), crash.group(0)
    assert "child-last-words" not in crash.group(0)
    assert "dying-words" in rows  # its slot's last_exit quotes them
    # The job that ends its worker may be run again by the next (the server's retries).
    stray = r"worker glue#0 cpu\d+ \(pid \d+\): child-output-without-newline"
    if log_format == "text":
        lines = text.splitlines()
        assert [line for line in lines if re.search(rf" INFO {stray}$", line)], lines
        own = [line for line in lines if "worker-own-error-record" in line]
        assert own and all(
            re.fullmatch(r"\S+ \S+ farm-worker glue#0\[\d+\] ERROR worker-own-error-record", line)
            for line in own
        ), own
        return
    records = [json.loads(line) for line in text.splitlines()]
    children = [r for r in records if "child-output-without-newline" in r["message"]]
    assert children and all(
        re.fullmatch(stray, r["message"]) and r["level"] == "INFO" for r in children
    ), children
    own = [r for r in records if "worker-own-error-record" in r["message"]]
    assert own and all(
        (r["level"], r["role"], r["logger"], r["message"])
        == ("ERROR", "worker", "mine", "worker-own-error-record")
        for r in own
    ), own


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_record_past_the_longest_line_is_the_workers_to_its_end(
    tmp_path: Path, log_format: str
) -> None:
    # log.warning("M" * 300000): its line is cut at LONGEST_LINE, and only the first piece
    # began with the mark: the rest was logged as the worker's stray output, at INFO (in
    # JSON every piece, the first no JSON object either: the WARNING was lost).
    up = _farm(tmp_path, log_format, "long")
    try:
        pid = up.wait_idle({"long": 1})[0]["pid"]
        with farm.Client(up.addr) as client:
            assert client.call("long", b"", timeout=30) == b"said"
        wait_for("the record's end", lambda: "END-LONG" in up.read_log(), 30)
    finally:
        up.stop()
    lines = [line for line in up.log_path.read_text().splitlines() if "MMM" in line]
    assert len(lines) > 1 and all(len(line) > LONGEST_LINE for line in lines[:-1]), len(lines)
    continued = rf"worker long#0 cpu\d+ \(pid {pid}\): "
    if log_format == "text":
        first, *rest = lines
        assert re.match(rf"\S+ \S+ farm-worker long#0\[{pid}\] WARNING MMM", first), first[:200]
        for line in rest:
            assert re.match(rf"\S+ \S+ farm\[\d+\] WARNING {continued}M", line), line[:200]
        pieces = [first.partition(" WARNING ")[2]] + [line.partition("): ")[2] for line in rest]
    else:
        records = [json.loads(line) for line in lines]
        assert all(r["level"] == "WARNING" for r in records), [r["level"] for r in records]
        assert all(re.match(continued, r["message"]) for r in records), records[0]["message"][:200]
        # The first piece is the worker's record cut short: its JSON, quoted.
        assert records[0]["message"].partition("): ")[2].startswith('{"time": ')
        pieces = [r["message"].partition("): ")[2] for r in records]
        pieces[0] = pieces[0].partition('"message": "')[2]
    said = "".join(pieces)
    assert said.count("M") == LONG and "M" * 10 + " END-LONG" in said


def test_a_long_traceback_line_keeps_its_records_level_whatever_it_says(tmp_path: Path) -> None:
    # A traceback's lines carry no header of their own; the level of a cut one's rest was
    # searched for in its text ("[N] LEVEL "), which a job's exception message wrote:
    # ValueError("[1] CRITICAL xxx...") put CRITICAL lines in the supervisor's log (and
    # one with no such text had its rest logged at INFO). The worker says each line's
    # level beside its mark, which no job can write.
    up = _farm(tmp_path, "text", "forged")
    try:
        pid = up.wait_idle({"forged": 1})[0]["pid"]
        with farm.Client(up.addr) as client, pytest.raises((farm.JobException, farm.JobFailed)):
            client.call("forged", b"", timeout=30)
        wait_for("the record's end", lambda: "END-FORGED" in up.read_log(), 30)
    finally:
        up.stop()
    lines = up.log_path.read_text().splitlines()
    header = [line for line in lines if re.match(rf"\S+ \S+ farm-worker forged#0\[{pid}\] ", line)]
    assert header, lines[-20:]
    level = header[-1].split()[4]
    rests = [line for line in lines if re.search(rf"\(pid {pid}\): x", line)]
    assert len(rests) > 1, [line[:120] for line in lines]
    for line in rests:
        assert re.match(rf"\S+ \S+ farm\[\d+\] {level} worker forged#0", line), line[:120]
    assert not [line for line in lines if re.match(r"\S+ \S+ farm\[\d+\] CRITICAL ", line)]
