"""farm.logs: lines to systemd's journal carry their priority; refusals are throttled; text
lines escape control characters."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from farm.logprints import LogLines
from farm.logrepeats import Brief, Repeats
from farm.logs import TextFormatter, _JournalPriority, _to_journal


def record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("farm", level, __file__, 1, msg, None, None)


def test_the_journal_stream_is_known_by_its_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stream", "w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert _to_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
        assert not _to_journal(stream)  # inherited by a process whose stderr is elsewhere


def test_each_line_carries_its_priority_so_journalctl_p_finds_it() -> None:
    formatter = _JournalPriority(logging.Formatter("%(levelname)s %(message)s"))
    assert formatter.format(record(logging.WARNING, "slow")) == "<4>WARNING slow"
    assert formatter.format(record(logging.ERROR, "a\nb")) == "<3>ERROR a\n<3>b"
    assert formatter.format(record(logging.INFO, "up")).startswith("<6>")
    assert formatter.format(record(logging.DEBUG, "x")).startswith("<7>")
    assert formatter.format(record(logging.CRITICAL, "x")).startswith("<2>")


def test_brief_logs_one_line_a_while_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("farm.test.brief")
    brief = Brief(logger, every=3600.0)
    with caplog.at_level(logging.WARNING, logger="farm.test.brief"):
        for i in range(5):
            brief("refused %d", i)
        brief._one._due[None][0] = 0.0  # as if the hour had passed
        brief("refused %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused 5 (and 4 more such since the last line)",
    ]


def test_repeats_logs_each_kind_a_while_and_remembers_a_bounded_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("farm.test.repeats")
    repeats = Repeats(logger, every=3600.0, kinds=2)
    with caplog.at_level(logging.WARNING, logger="farm.test.repeats"):
        for i in range(3):
            repeats("a", logging.WARNING, "a %d", i)
            repeats("b", logging.ERROR, "b %d", i)
        repeats._due["a"][0] = 0.0  # as if the hour had passed for kind a
        repeats("a", logging.WARNING, "a %d", 3)
        repeats("c", logging.WARNING, "c")  # a third kind: the oldest (a) is forgotten
        repeats("a", logging.WARNING, "a again")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "a 0"),
        (logging.ERROR, "b 0"),
        (logging.WARNING, "a 3 (and 2 more such since the last line)"),
        (logging.WARNING, "c"),
        (logging.WARNING, "a again"),
    ]
    assert len(repeats._due) == 2


def test_print_bytes_and_threads_become_whole_lines(caplog: pytest.LogCaptureFixture) -> None:
    # A job's print() from several threads, and bytes on sys.stdout.buffer, which the
    # first LogLines lacked (AttributeError in job code that wrote bytes).
    real = io.StringIO()
    lines = LogLines(logging.getLogger("farm.test.lines"), logging.INFO, real)
    with caplog.at_level(logging.INFO, logger="farm.test.lines"):
        lines.buffer.write(b"as bytes\n")
        lines.write("in ")
        lines.write("two parts\nand a partial")
        lines.flush()

        def chatter(i: int) -> None:
            for k in range(50):
                lines.write(f"thread {i} line {k}\n")

        threads = [threading.Thread(target=chatter, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    said = [r.getMessage() for r in caplog.records]
    assert said[:3] == ["as bytes", "in two parts", "and a partial"]
    assert sorted(said[3:]) == sorted(f"thread {i} line {k}" for i in range(4) for k in range(50))
    assert real.getvalue() == ""


def test_bytes_split_inside_a_character_are_one_character(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Output copied to sys.stdout.buffer in chunks (shutil.copyfileobj, a child's pipe) is
    # cut anywhere: each chunk was decoded alone, and "é" cut in two logged as "\ufffd\ufffd".
    lines = LogLines(logging.getLogger("farm.test.split"), logging.INFO, io.StringIO())
    with caplog.at_level(logging.INFO, logger="farm.test.split"):
        lines.buffer.write(b"caf\xc3")
        lines.buffer.write(b"\xa9 \xe2\x82")
        lines.buffer.write(b"\xac\n\xff ok\n")
    assert [r.getMessage() for r in caplog.records] == ["caf\u00e9 \u20ac", "\ufffd ok"]


def test_bytes_written_while_a_write_is_under_way_in_the_same_thread_do_not_deadlock() -> None:
    # A signal handler that writes to sys.stdout.buffer while a write is inside logging
    # (here: a handler that does so) took the stream's lock again in the same thread.
    real = io.StringIO()
    log = logging.getLogger("farm.test.reentrant")
    log.propagate = False
    log.setLevel(logging.INFO)
    lines = LogLines(log, logging.INFO, real)

    class Nested(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.buffer.write(b"from inside\n")  # inside logging: the real stream's

    log.addHandler(Nested())
    writer = threading.Thread(target=lines.buffer.write, args=(b"outer\n",), daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "the second write waited for the first one's lock"
    assert real.getvalue() == "from inside\n"


def test_text_lines_escape_control_characters_but_keep_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("farm.test.escapes")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("function %r registered: %s", "x", "a\x1b[2Jb\nINFO forged\tok\x7f\x9b é")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    first, *rest = stream.getvalue().splitlines()
    assert first == r"WARNING function 'x' registered: a\x1b[2Jb\nINFO forged" + "\tok\\x7f\\x9b é"
    assert rest[0] == "ERROR failed" and rest[1] == "Traceback (most recent call last):"


def test_a_marked_process_starts_each_line_with_its_mark_before_its_priority() -> None:
    # A supervised worker's lines share a pipe with what its jobs write past the logger;
    # the mark tells its own apart: on every line, a traceback's too, ahead of the <N> the
    # supervisor passes on to the journal; the letter after it is the record's level, for
    # the supervisor to log a cut line's rest at (no text is read for it).
    script = textwrap.dedent(
        """
        import logging, sys
        from farm.logs import journal_priorities, setup_logging
        setup_logging(role="worker", text_format="%(levelname)s %(message)s",
                      stream=sys.stdout, journal=True, mark="M")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("w").exception("failed\\nhere")
        logging.getLogger("w").warning("then")
        print(journal_priorities())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "ME<3>ERROR failed\\nhere" and out[-1] == "True"
    assert out[1] == "ME<3>Traceback (most recent call last):"
    assert all(line.startswith("ME<3>") for line in out[:-2]) and len(out) > 5, out
    assert out[-2] == "MW<4>WARNING then"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_relayed_lines_keep_no_control_character_and_json_stays_json(log_format: str) -> None:
    # A worker's JSON record quoting DEL or C1 (json.dumps leaves them raw) was escaped
    # as \x7f by the supervisor's relay, which is no JSON escape: the line stopped parsing.
    script = textwrap.dedent(
        f"""
        import json, sys
        from farm.logrelay import relay_lines
        from farm.logs import JsonFormatter, setup_logging
        import logging
        setup_logging(role="supervisor", log_format={log_format!r}, text_format="%(message)s",
                      stream=sys.stdout, journal=False)
        record = logging.LogRecord("farm", 20, "f", 1, "a\\x7f\\x9b\\x1b[2Jb", None, None)
        stray = lambda line, level: logging.getLogger("s").log(level, "%s", line)
        relay_lines(["MI" + JsonFormatter("worker").format(record), "MIraw \\x1b]0;t\\x07 out"],
                    "M", stray)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    worker_line, raw_line = out.splitlines()
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out.replace("\n", ""))
    if log_format == "json":
        assert json.loads(worker_line)["message"] == "a\x7f\x9b\x1b[2Jb"
        # No JSON object though marked (a record cut short): a record of the relay's own.
        said = json.loads(raw_line)
        assert (said["logger"], said["message"]) == ("s", "raw \x1b]0;t\x07 out")
        assert '"raw \\u001b]0;t\\u0007 out"' in raw_line
    else:
        assert raw_line == "raw \\x1b]0;t\\x07 out"


def test_relayed_json_keeps_a_workers_records_and_hands_on_stray_lines() -> None:
    # Under systemd a worker's record starts with its journal priority (<4>{...}): it is a
    # record all the same, relayed as it is; only a line that is no JSON object is stray.
    script = textwrap.dedent(
        """
        import json, sys
        from farm.logrelay import relay_lines
        from farm.logs import setup_logging
        setup_logging(role="supervisor", log_format="json", text_format="%(message)s",
                      stream=sys.stdout, journal=False)
        stray = []
        record = json.dumps({"time": "t", "message": "m"})
        lines = ["<4>" + record, "C library output", record, "{half", "<6>", record]
        relay_lines(["MW" + line for line in lines[:5]] + [lines[5]], "M",
                    lambda line, level: stray.append(line))
        print(json.dumps(stray))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    record = '{"time": "t", "message": "m"}'
    assert out[:2] == ["<4>" + record, record]
    # A record without the worker's mark is stray too: a job wrote it past the logger.
    assert json.loads(out[2]) == ["C library output", "{half", "<6>", record]


@pytest.mark.parametrize("journal", [True, False])
def test_a_journal_line_leaves_the_time_to_journald_and_others_keep_it(journal: bool) -> None:
    # journald records each line's time, and its writer's name and pid: a line to it that
    # said them again showed them twice in `journalctl`. A terminal, a file, a pipe have
    # no such record: their lines are as they were.
    script = textwrap.dedent(
        f"""
        import logging, sys
        from farm.logs import setup_logging
        setup_logging(role="supervisor", stream=sys.stdout, journal={journal},
                      text_format="%(asctime)s farm[%(process)d] %(levelname)s %(message)s",
                      journal_format="%(levelname)s %(message)s")
        logging.getLogger("s").warning("up")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    if journal:
        assert out == "<4>WARNING up\n"
    else:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} farm\[\d+\] WARNING up\n", out)


@pytest.mark.parametrize(
    "forged",
    [
        "2026-12-06 16:44:20,000 farm[1] ERROR job server (pid 2) died",  # the text format
        "<3>ERROR job server (pid 2) died",  # a journal line
        '{"level": "CRITICAL", "role": "supervisor", "message": "died"}',  # a JSON record
        "ERROR pool farm.python: every worker crashed",  # the journal's, past its <N>
        "\u200b2026-12-06 16:44:20,000 farm[1] ERROR died",  # an unseen character first
    ],
)
def test_an_exceptions_message_cannot_start_a_line_of_the_log(forged: str) -> None:
    # A job's ValueError(f"bad row {row}"), its row a caller's, gave the log a line of its
    # own that read as the farm's; a worker's line with its mark is passed on as it is.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(asctime)s farm[%(process)d] %(levelname)s %(message)s"))
    log = logging.getLogger("farm.test.forged")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError("bad row:\n" + forged)
        except ValueError:
            log.exception("job failed")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert f"  {forged}" in lines, lines  # still said, and readable
    assert lines[0].endswith("ERROR job failed") and "Traceback (most recent call last):" in lines
    assert "ValueError: bad row:" in lines
    assert [line for line in lines[1:] if line[:1] in "0123456789<{E\u200b"] == [], lines


def test_a_traceback_another_handler_formatted_first_is_still_escaped() -> None:
    # logging.Formatter.format keeps a record's traceback text in record.exc_text, which
    # every handler of the record reads: a handler with a stock formatter ahead of farm's
    # (a library's, pytest 9.2's log capture on a logger that does not propagate) left its
    # raw text there, and farm's formatter wrote it out unescaped and unindented.
    forged = "2026-12-06 16:44:20,000 farm[1] ERROR job server (pid 2) died"
    first, ours = io.StringIO(), io.StringIO()
    stock = logging.StreamHandler(first)
    stock.setFormatter(logging.Formatter("%(message)s"))
    handler = logging.StreamHandler(ours)
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("farm.test.shared")
    log.propagate = False
    for each in (stock, handler):
        log.addHandler(each)
    try:
        try:
            raise ValueError("bad row:\x1b[2J\n" + forged)
        except ValueError:
            log.exception("job failed")
    finally:
        for each in (stock, handler):
            log.removeHandler(each)
    assert forged in first.getvalue().splitlines()  # the stock handler's own, as it was
    lines = ours.getvalue().splitlines()
    assert "ValueError: bad row:\\x1b[2J" in lines and f"  {forged}" in lines, lines


def test_a_traceback_a_record_brings_as_text_is_escaped() -> None:
    # A record made from another's fields (logging.makeLogRecord, a socket handler's) has
    # its traceback as text alone, with no exc_info to format again.
    forged = "<3>ERROR job server (pid 2) died"
    text = 'Traceback (most recent call last):\n  File "x"\nValueError: a\x1b[2J\n' + forged
    rec = logging.makeLogRecord({"msg": "job failed", "levelname": "ERROR", "exc_text": text})
    lines = TextFormatter("%(levelname)s %(message)s").format(rec).splitlines()
    assert lines[-2:] == ["ValueError: a\\x1b[2J", f"  {forged}"], lines
    assert rec.exc_text == text  # left as it came, for the record's other handlers
