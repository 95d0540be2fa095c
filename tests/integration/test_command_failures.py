"""A command pool whose worker fails says why, in the warning `journalctl -p warning`
shows: its last output (a shell's, PHP's fatal error by its first line), or why it could not
be executed at all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_crashing_command_workers_warning_quotes_its_last_output(tmp_path: Path) -> None:
    # Its output is logged at INFO, so `journalctl -p warning` showed "crashed: exited with
    # code 255" and never why (a PHP fatal error, a missing script).
    script = tmp_path / "fatal.sh"
    script.write_text("echo starting\necho 'PHP Fatal error: no such class' >&2\nexit 255\n")
    up = FarmUp(
        tmp_path,
        f"""
        [functions.fatal]
        command = ["sh", "{script}"]
        workers = 1
        """,
    )
    try:
        line = wait_for(
            "the crash's warning",
            lambda: next(
                (row for row in up.read_log().splitlines() if "crashed: exited with" in row), None
            ),
        )
        assert "WARNING" in line and "its last output: 'PHP Fatal error: no such class'" in line
    finally:
        up.stop()


def test_a_php_workers_uncaught_exception_is_quoted_by_its_first_line(tmp_path: Path) -> None:
    # PHP ends an uncaught exception's report with "  thrown in FILE on line N": the
    # warning quoted that, and `journalctl -p warning` never said which exception.
    script = tmp_path / "fatal.sh"
    script.write_text(
        "echo 'PHP Fatal error:  Uncaught Exception: no database in /srv/w.php:3' >&2\n"
        "echo 'Stack trace:' >&2\necho '#0 {main}' >&2\n"
        "echo '  thrown in /srv/w.php on line 3' >&2\nexit 255\n"
    )
    up = FarmUp(tmp_path, f'[functions.fatal]\ncommand = ["sh", "{script}"]\nworkers = 1\n')
    try:
        line = wait_for(
            "the crash's warning",
            lambda: next((r for r in up.read_log().splitlines() if "crashed: exited" in r), None),
        )
        assert "its last output: 'PHP Fatal error:  Uncaught Exception: no database" in line
    finally:
        up.stop()


def test_a_command_that_cannot_exec_is_a_boot_failure_that_says_why(tmp_path: Path) -> None:
    # The forked child threw the exec error away: "crashed: exited with code 127;
    # restarting now", again and again, and never why.
    script = tmp_path / "noshebang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    up = FarmUp(tmp_path, f'[functions.bad]\ncommand = ["{script}"]\nworkers = 1\n')
    try:
        line = wait_for(
            "the boot failure's warning",
            lambda: next((r for r in up.read_log().splitlines() if "failed to boot" in r), None),
        )
        assert (
            f"failed to boot (farm: cannot exec {script}: [Errno 8] Exec format error);"
            " restarting in 2s (slot failing)"
        ) in line, line
        assert "crashed" not in up.read_log()
        up.expect_notify("READY=1")  # a failing slot does not hold readiness back
    finally:
        assert up.stop() == 0


def test_an_old_line_is_quoted_with_its_age_not_as_the_crashs_why(tmp_path: Path) -> None:
    # A crash was logged "its last output: '<a warning another call printed two minutes
    # earlier>'", as if that said why it died: a line not written as it ended says its age.
    script = tmp_path / "quiet.sh"
    script.write_text("echo 'Warning: cache is cold'\nsleep 2\nexit 1\n")
    fresh = tmp_path / "loud.sh"
    fresh.write_text("sleep 2\necho 'PHP Fatal error: out of memory' >&2\nexit 1\n")
    up = FarmUp(
        tmp_path,
        f"""
        [functions.quiet]
        command = ["sh", "{script}"]
        workers = 1

        [functions.loud]
        command = ["sh", "{fresh}"]
        workers = 1
        """,
    )
    try:

        def crash(pool: str) -> str | None:
            rows = up.read_log().splitlines()
            return next((r for r in rows if f"worker {pool}#0" in r and "crashed:" in r), None)

        quiet = wait_for("the quiet one's crash", lambda: crash("quiet"))
        line = re.search(r"its last output \(([\d.]+)s before it ended\): 'Warning: cache", quiet)
        assert line is not None, quiet
        assert 1.5 <= float(line.group(1)) <= 10.0, quiet
        loud = wait_for("the loud one's crash", lambda: crash("loud"))
        assert "its last output: 'PHP Fatal error: out of memory'" in loud, loud  # fresh: as is
    finally:
        up.stop()
