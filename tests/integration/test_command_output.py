"""A command worker's output under `farm up`: logged a line each, within a budget per
process, so one flooding worker cannot flood the journal (docs/operations.md, "Command
pools")."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from farm.pools.outputlimit import OUTPUT_BURST, OUTPUT_RATE
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

FLOOD = 50_000


def test_a_flooding_worker_is_cut_to_its_budget_and_says_what_was_dropped(
    tmp_path: Path,
) -> None:
    # `command = ["yes", "spam"]` had the supervisor log ~39,000 lines a second, and
    # journald's rate limit then dropped the farm's own warnings with them.
    flood = tmp_path / "flood.sh"
    flood.write_text(f"yes spam | head -n {FLOOD}\necho 'Fatal error: out of spam' >&2\nexit 1\n")
    talk = tmp_path / "talk.sh"
    talk.write_text("seq 1 250 | sed 's/^/line /'\nexec sleep 600\n")
    up = FarmUp(
        tmp_path,
        f"""
        [functions.flood]
        command = ["sh", "{flood}"]
        workers = 1

        [functions.talk]
        command = ["sh", "{talk}"]
        workers = 1
        graceful_timeout = 1
        """,
    )
    try:
        crash = wait_for(
            "the flood's first crash",
            lambda: re.search(
                r"worker flood#0 cpu\d+ \(pid (\d+), up ([\d.]+)s.*crashed: exited with code 1.*",
                up.read_log(),
            ),
            30,
        )
        log = up.read_log()
        pid, lived = crash.group(1), float(crash.group(2))
        # Its last words are quoted though the flood before them was dropped.
        assert "its last output: 'Fatal error: out of spam'" in crash.group(0), crash.group(0)
        logged = log.count(f"(pid {pid}): spam\n")
        dropped = sum(
            int(n)
            for n in re.findall(
                rf"WARNING worker flood#0 cpu\d+ \(pid {pid}\): (\d+) lines of output dropped"
                rf" in [\d.]+s \(more than {OUTPUT_BURST} at once or {OUTPUT_RATE:g} a second\)",
                log,
            )
        )
        assert OUTPUT_BURST <= logged <= OUTPUT_BURST + OUTPUT_RATE * (lived + 1), logged
        fatal = log.count(f"(pid {pid}): Fatal error: out of spam\n")
        assert logged + fatal + dropped == FLOOD + 1  # every line is logged or counted
        # A worker that says a little is heard in full, and nothing of it is dropped.
        talked = wait_for(
            "the talk's lines",
            lambda: (text := up.read_log()).count("): line ") == 250 and text,
        )
        assert all(f"): line {n}\n" in talked for n in range(1, 251))
        assert not re.search(r"worker talk#0 .* lines of output dropped", talked)
    finally:
        up.stop()


def test_escape_sequences_in_a_commands_output_reach_the_log_escaped(tmp_path: Path) -> None:
    # A command's output may echo what any caller sent; raw, an ESC sequence in it would
    # retitle or clear the terminal that tails the log, and a \r would overwrite the line.
    talk = tmp_path / "talk.sh"
    talk.write_text(r"printf 'one\033]0;pwned\007two\033[2J\rthree\n'" + "\nexec sleep 600\n")
    up = FarmUp(
        tmp_path,
        f"""
        [functions.talk]
        command = ["sh", "{talk}"]
        workers = 1
        graceful_timeout = 1
        """,
    )
    try:
        line = wait_for(
            "the talk's line",
            lambda: re.search(r"worker talk#0 .*\): one.*three\n", up.read_log()),
        )
        assert line.group(0).endswith(r"one\x1b]0;pwned\x07two\x1b[2J\rthree" + "\n")
        assert "\x1b" not in up.read_log() and "\x07" not in up.read_log()
    finally:
        up.stop()


def test_a_wrappers_worker_is_heard_after_its_shell_died_of_the_stop_signal(
    tmp_path: Path,
) -> None:
    # `sh -c "php worker.php; ..."` drained: the shell dies of the stop signal at once and
    # the worker it started has the rest of the grace to finish (docs/operations.md,
    # "Command pools"). The supervisor closed the output pipe as it reaped the shell, so
    # what the worker wrote then was lost, and one that does not ignore SIGPIPE (Perl, C)
    # died of its first line: mid-job, the job it was finishing cut off.
    (tmp_path / "finish.py").write_text(
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as Perl and C programs have it\n"
        "shell = int(sys.argv[1])\n"
        "signal.signal(signal.SIGTERM, lambda *_: None)  # finishes its job, then exits\n"
        "Path('started').touch()\n"
        "signal.pause()\n"
        "while os.getppid() == shell:  # the shell, dead of the signal, is reaped\n"
        "    time.sleep(0.05)\n"
        "time.sleep(0.2)\n"
        "for n in range(3):\n"
        "    print('finishing', n, flush=True)\n"
        "Path('finished').touch()\n"
    )
    wrapper = f'["sh", "-c", "{sys.executable} finish.py $$; echo done"]'
    up = FarmUp(
        tmp_path,
        f'[functions.fin]\ncommand = {wrapper}\ncwd = "{tmp_path}"\nworkers = 1\n'
        "graceful_timeout = 20\n",
        supervisor="ready_wait = 1",  # it never connects: READY=1 without it
    )
    try:
        up.expect_notify("READY=1")
        wait_for("the wrapper's worker", (tmp_path / "started").exists)
        assert farm_cli("scale", "fin=0", "--control", up.control).returncode == 0
        wait_for(
            "the worker's last lines logged",
            lambda: all(f"): finishing {n}\n" in up.read_log() for n in range(3)),
            15,
        )
        assert (tmp_path / "finished").exists(), "it died writing its output (SIGPIPE)"
    finally:
        up.stop()
