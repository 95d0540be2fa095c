"""A worker's output budget without processes: a burst, then a steady rate, and what is
over counted and reported once an interval (farm.pools.outputlimit)."""

from __future__ import annotations

from farm.pools.outputlimit import (
    DROPS_EVERY,
    LONGEST_LINE,
    OUTPUT_BURST,
    OUTPUT_RATE,
    OutputLimit,
    OutputLines,
)


def test_a_burst_passes_then_a_steady_rate() -> None:
    limit = OutputLimit()
    assert all(limit.admit(100.0) for _ in range(OUTPUT_BURST))
    assert not limit.admit(100.0)
    # one second later, one second's worth more, and no more
    admitted = sum(limit.admit(101.0) for _ in range(1000))
    assert admitted == int(OUTPUT_RATE)
    assert limit.dropped == 1 + 1000 - admitted


def test_a_quiet_worker_gets_its_burst_back_but_no_more() -> None:
    limit = OutputLimit(burst=5, rate=1.0)
    assert [limit.admit(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert sum(limit.admit(3600.0) for _ in range(10)) == 5


def test_drops_are_reported_once_an_interval_and_at_the_end() -> None:
    limit = OutputLimit(burst=1, rate=1.0)
    assert limit.admit(10.0) and not limit.admit(10.0) and not limit.admit(10.0)
    assert limit.drops_due(10.0 + DROPS_EVERY / 2) == (0, 0.0)  # not yet: one line an interval
    assert limit.drops_due(10.0 + DROPS_EVERY) == (2, DROPS_EVERY)
    assert limit.drops_due(10.0 + DROPS_EVERY) == (0, 0.0)  # said once
    assert limit.admit(20.0) and not limit.admit(20.0) and not limit.admit(20.5)
    assert limit.drops_due(22.0, final=True) == (2, 2.0)  # its end: whatever is left, at once


def test_nothing_dropped_nothing_to_report() -> None:
    limit = OutputLimit()
    assert limit.admit(0.0)
    assert limit.drops_due(3600.0, final=True) == (0, 0.0)


def test_many_lines_at_once_are_admitted_as_one_at_a_time_would_be() -> None:
    one, many = OutputLimit(burst=5, rate=2.0), OutputLimit(burst=5, rate=2.0)
    assert many.admit_many(7, 0.0) == sum(one.admit(0.0) for _ in range(7)) == 5
    assert many.admit_many(10, 1.5) == sum(one.admit(1.5) for _ in range(10)) == 3
    assert many.dropped == one.dropped == 9 and many.since == one.since == 0.0
    assert many.flooding and one.flooding


def test_output_comes_in_pieces_and_leaves_as_whole_lines() -> None:
    out = OutputLines()
    assert out.take(b"one\ntw", 0.0) == ["one"]
    assert out.take(b"o\r\nthr", 0.0) == ["two"]
    assert out.take(b"ee", 0.0, final=True) == ["three"]  # its end: the unended line too
    assert out.take(b"x" * (LONGEST_LINE + 1), 0.0) == ["x" * (LONGEST_LINE + 1)]  # held no more
    assert out.take(b"\xff\n", 0.0) == ["\ufffd"]


def test_a_flood_is_counted_past_its_budget_and_its_last_line_kept() -> None:
    # `yes` wrote ~40,000 lines a second: each was split off, decoded and looked at, then
    # dropped, a core's work. Past the budget the lines are counted, not split.
    out = OutputLines(OutputLimit(burst=3, rate=1.0))
    flood = b"y\n" * 100_000
    assert out.take(flood + b"last words\n  at frame\n", 0.0) == ["y", "y", "y"]
    assert out.limit.dropped == 100_000 - 3 + 2
    assert out.last_words == "last words"  # not its trace's tail
    assert out.take(flood, 0.5) == []  # half a line's worth of budget: nothing
    assert out.limit.dropped == 2 * 100_000 - 3 + 2
    assert out.last_words == "y"


def test_a_python_workers_last_words_are_said_without_its_mark() -> None:
    # Its own log lines start with the mark the supervisor gave it (farm.logrelay.relay_lines):
    # the log of its end quotes what it said, not the secret before it.
    out = OutputLines(mark="0f" * 16)
    out.take(("0f" * 16 + "W<4>2026-12-06 f#0[7] WARNING out of spam\n").encode(), 0.0)
    assert out.last_words == "2026-12-06 f#0[7] WARNING out of spam"
    out.take(b"Segmentation fault\n", 0.0)  # past its logger: no mark to take off
    assert out.last_words == "Segmentation fault"


MARK = "0f" * 16


def test_last_words_after_a_childs_unended_output_are_the_workers_record_without_its_mark() -> None:
    # A child's output with no newline, then the worker's record: one line, the mark inside
    # it. Quoted whole, the log of the worker's end and `farm ps` said the secret.
    out = OutputLines(mark=MARK)
    out.take(f"child-output{MARK}E<3>2026-12-06 f#0[7] ERROR dying\n".encode(), 0.0)
    assert out.last_words == "2026-12-06 f#0[7] ERROR dying"
    out.take(f"{MARK}Ione{MARK}I  two\n".encode(), 0.0)  # a trace's tail: the record before
    assert out.last_words == "one"


def test_a_line_cut_at_the_longest_is_never_cut_inside_the_mark() -> None:
    # Cut between two reads where the mark had come in part, the line's two pieces, each
    # logged, held the whole of it between them.
    out = OutputLines(mark=MARK)
    data = b"x" * LONGEST_LINE + MARK[:9].encode()
    assert out.take(data, 0.0) == ["x" * LONGEST_LINE]  # the mark's start held back
    assert out.cut and not out.continues
    assert out.take(MARK[9:].encode() + b"<4>rest\n", 0.0) == [MARK + "<4>rest"]
    assert out.continues and not out.cut


def test_a_line_cut_just_after_a_mark_and_its_level_holds_both_back() -> None:
    # A read that ended with a whole mark and its level's letter sent them with the piece
    # before the cut: the worker's record after them came as a piece of no mark, its
    # output's, not its own.
    out = OutputLines(mark=MARK)
    data = b"x" * LONGEST_LINE + MARK.encode() + b"W"
    assert out.take(data, 0.0) == ["x" * LONGEST_LINE]
    assert out.take(b"2026 f#0[7] WARNING its own record\n", 0.0) == [
        MARK + "W2026 f#0[7] WARNING its own record"
    ]


def test_a_cut_line_is_said_to_continue_only_while_its_start_was_logged() -> None:
    # The rest of a cut line is the same record's (a Python worker's own, farm.logrelay),
    # unless its start was dropped with a flood: then it continues nothing logged.
    out = OutputLines(OutputLimit(burst=2, rate=1.0))
    assert out.take(b"y" * (LONGEST_LINE + 1), 0.0) == ["y" * (LONGEST_LINE + 1)]
    assert out.cut
    assert out.take(b"z\nw\n" + b"v" * (LONGEST_LINE + 1), 0.0) == ["z"]
    assert out.continues and not out.cut  # its last line, cut, was dropped
    assert out.take(b"v\n", 10.0) == ["v"]
    assert not out.continues
