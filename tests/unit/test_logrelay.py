"""farm.logrelay: a Python worker's own records are told from its jobs' output by the mark
wherever it comes in a line, and the mark is written on no line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

MARK = "0f" * 16


def relayed(log_format: str, calls: str) -> list[str]:
    """The log lines of a process, set up as the supervisor's in ``log_format``, that runs
    ``calls`` (relay_lines' with ``M`` the mark): ``stray`` logs each line it is given as
    "stray: LINE" (logger "s", at INFO)."""
    script = textwrap.dedent(
        f"""
        import logging, sys
        from farm.logrelay import relay_lines
        from farm.logs import setup_logging
        setup_logging(role="supervisor", log_format={log_format!r},
                      text_format="%(levelname)s %(message)s", stream=sys.stdout,
                      journal=False)
        M = {MARK!r}
        stray = lambda line: logging.getLogger("s").info("stray: %s", line)
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
        relay_lines([
            "child-output" + M + "f#0[7] ERROR one" + M + "f#0[7] INFO two",
            M + "f#0[7] INFO three",
            "plain",
            M + M + "f#0[7] INFO four",
        ], M, stray)
        """,
    )
    assert lines == [
        "INFO stray: child-output",
        "f#0[7] ERROR one",
        "f#0[7] INFO two",
        "f#0[7] INFO three",
        "INFO stray: plain",
        "f#0[7] INFO four",  # nothing between two marks: no line
    ]
