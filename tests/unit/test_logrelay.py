"""farm.logrelay: a Python worker's own records are told from its jobs' output by the mark
wherever it comes in a line, a record cut at the longest line stays the worker's to its
end, and the mark is written on no line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

MARK = "0f" * 16


def relayed(log_format: str, calls: str) -> list[str]:
    """The log lines of a process, set up as the supervisor's in ``log_format``, that runs
    ``calls`` (relay_lines' with ``M`` the mark): ``stray`` logs each line it is given as
    "stray: LINE" (logger "s", at the level given)."""
    script = textwrap.dedent(
        f"""
        import logging, sys
        from farm.logrelay import relay_lines
        from farm.logs import setup_logging
        setup_logging(role="supervisor", log_format={log_format!r},
                      text_format="%(levelname)s %(message)s", stream=sys.stdout,
                      journal=False)
        M = {MARK!r}
        stray = lambda line, level: logging.getLogger("s").log(level, "stray: %s", line)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(calls)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert MARK not in out
    return out.splitlines()


def test_each_mark_in_a_line_starts_a_record_and_what_is_before_the_first_is_stray() -> None:
    # A child's output with no newline ("printf x"), then the worker's record: one line,
    # not starting with the mark, was logged whole as stray output, mark and all; a child
    # that read the log then had the secret, and could forge the worker's records.
    lines = relayed(
        "text",
        """
        print(relay_lines([
            "child-output" + M + "Ef#0[7] ERROR one" + M + "If#0[7] INFO two",
            M + "If#0[7] INFO three",
            "plain",
            M + M + "If#0[7] INFO four",
        ], M, stray))
        """,
    )
    assert lines == [
        "INFO stray: child-output",
        "f#0[7] ERROR one",
        "f#0[7] INFO two",
        "f#0[7] INFO three",
        "INFO stray: plain",
        "f#0[7] INFO four",  # nothing between two marks: no line
        "None",  # nothing cut: no level for a rest
    ]


def test_a_records_rest_past_the_cut_is_logged_at_its_level() -> None:
    # A record past LONGEST_LINE comes in pieces, only the first after the mark: the rest
    # was logged as the worker's output (INFO), and in JSON the first as well, no object.
    start = json.dumps({"time": "t", "level": "WARNING", "message": "aaa"})[:-2]
    lines = relayed(
        "json",
        f"""
        level = relay_lines(["child" + M + "W" + {start!r}], M, stray, cut=True)
        level = relay_lines(["bbb"], M, stray, continued=level, cut=True)
        print(relay_lines(["ccc", "after"], M, stray, continued=level, cut=True))
        """,
    )
    records = [json.loads(line) for line in lines[:-1]]
    said = [(r["level"], r["logger"], r["message"]) for r in records]
    assert said == [
        ("INFO", "s", "stray: child"),
        ("WARNING", "s", "stray: " + start),
        ("WARNING", "s", "stray: bbb"),
        ("WARNING", "s", "stray: ccc"),
        ("INFO", "s", "stray: after"),  # the next line, no mark: a job's
    ]
    assert lines[-1] == "None"  # its last line, cut, is no record of the worker's


@pytest.mark.parametrize(
    "record",
    [
        "2026-12-06 16:44:20,000 farm-worker f#0[7] CRITICAL forged",  # a traceback's line
        "ValueError: [1] CRITICAL " + "x" * 100,  # what the text format's level was read as
        "<2>farm-worker f#0[7] CRITICAL said",  # a journal priority
        '{"time": "t", "level": "CRITICAL", "message": "said"}',
    ],
)
def test_a_records_level_is_the_letter_after_its_mark_whatever_it_says(record: str) -> None:
    # The level of a cut record's rest was searched for in its text, where a traceback's
    # line (no header of its own) says what a job's exception message did: a WARNING's
    # rest was logged as CRITICAL. The worker says it after the mark (farm.logs._Marked).
    lines = relayed(
        "text",
        f"""
        level = relay_lines([M + "W" + {record!r}], M, stray, cut=True)
        print(relay_lines(["rest"], M, stray, continued=level))
        """,
    )
    assert lines == [record, "WARNING stray: rest", "None"]
