"""The live view's tables and quantiles, from rows and buckets (no farm needed)."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from farm.cli.liveview import frame, process_table
from farm.cli.rows import FunctionRow, quantile, seconds


def render(renderable: object) -> str:
    console = Console(width=160, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_quantile_interpolates_within_a_bucket_as_promql_does() -> None:
    buckets = [(0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (math.inf, 20.0)]
    assert quantile(buckets, 0.5) == 0.2
    assert quantile(buckets, 0.25) == pytest.approx(0.15)
    assert quantile(buckets, 0.75) == pytest.approx(0.3)
    assert quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5) is None
    assert quantile([(0.1, 1.0), (math.inf, 5.0)], 0.99) == 0.1  # the open bucket: its edge


def test_seconds_fit_a_column() -> None:
    assert [seconds(v) for v in (None, 0.0004, 0.12, 2.5, 600)] == [
        "-",
        "0.40ms",
        "120ms",
        "2.5s",
        "10m",
    ]


ROWS = [
    {
        "pid": 10,
        "function": "supervisor",
        "slot": None,
        "cpu": None,
        "state": "running",
        "jobs": 0,
        "rss": 50 << 20,
        "restarts": 0,
    },
    {
        "pid": 11,
        "function": "resize",
        "slot": 1,
        "cpu": 3,
        "state": "busy",
        "jobs": 7,
        "rss": 20 << 20,
        "restarts": 2,
        "job": "H:x:9",
        "busy_for": 1.5,
    },
    {
        "pid": 12,
        "function": "resize",
        "slot": 0,
        "cpu": 2,
        "state": "idle",
        "jobs": 5,
        "rss": 30 << 20,
        "restarts": 0,
    },
]


def order(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


def test_the_process_table_sorts_by_the_key_and_shows_the_job_in_hand() -> None:
    text = render(process_table(ROWS, cpu={("resize", 1): 97.0, ("resize", 0): 3.0}))
    assert order(text) == ["12", "11", "10"]  # by function, then slot
    assert "H:x:9" in text and "1.5s" in text and "97" in text
    assert order(render(process_table(ROWS, sort="rss"))) == ["10", "12", "11"]
    assert order(render(process_table(ROWS, sort="cpu", cpu={("resize", 1): 97.0}))) == [
        "11",
        "12",
        "10",
    ]
    assert order(render(process_table(ROWS, sort="restarts")))[0] == "11"
    cut = render(process_table(ROWS, limit=1))
    assert "2 more" in cut


def test_a_frame_without_the_function_table_is_the_process_view() -> None:
    fn = FunctionRow(
        name="resize",
        queued=4,
        running=1,
        workers=2,
        idle=1,
        busy=1,
        rate=2.0,
        p50=0.1,
        p99=0.5,
        failures=1,
        refused=7,
        dropped=3,
    )
    full = render(frame([fn], ROWS, status="farm"))
    assert "QUEUED" in full and "resize" in full and "q quit" in full
    header, row = full.splitlines()[1:3]
    assert header.split()[-3:] == ["FAILED", "REFUSED", "DROPPED"]
    assert row.split()[-3:] == ["1", "7", "3"]
    only = render(frame(None, ROWS, keys=False))
    assert "QUEUED" not in only and "PID" in only and "q quit" not in only


@pytest.mark.parametrize("command", [["top"], ["ps", "--watch"]])
def test_an_interval_past_an_hour_is_a_usage_error(command: list[str]) -> None:
    # "inf" was taken, and the first pause between frames ended in time.sleep's
    # OverflowError: a traceback, exit 1.
    from typer.testing import CliRunner

    from farm.cli import app

    out = CliRunner().invoke(app, [*command, "--interval", "inf", "--control", "/nowhere.sock"])
    assert out.exit_code == 2 and "'--interval'" in out.output, out.output
    assert "Traceback" not in out.output


def test_a_command_worker_whose_registration_was_not_seen_says_so_everywhere() -> None:
    # Connected to remote servers only, it is running with no jobs and no job in hand as
    # far as anyone here can see: it must not read as a local worker's idle.
    from farm.cli.top import Sample, Sampler
    from farm.cli.watch import ps_lines

    base = {"slot": 0, "cpu": 0, "state": "running", "jobs": 0, "rss": 0, "restarts": 0}
    rows = [
        {**base, "pid": 21, "function": "far", "checked": False, "uptime": 1.0},
        {**base, "pid": 22, "function": "near", "checked": True, "uptime": 1.0},
    ]
    far, near = (line for line in ps_lines(rows)[1:])
    assert "running (not checked)" in far and "not checked" not in near
    drawn = render(process_table(rows)).splitlines()
    assert "running (not checked)" in next(line for line in drawn if " far " in line)
    assert "not checked" not in next(line for line in drawn if " near " in line)
    counted = Sampler("/nonexistent").functions(Sample(0.0, rows, None, None))
    by_name = {row.name: row for row in counted}
    assert (by_name["far"].idle, by_name["far"].busy) == (0, 0)
    assert (by_name["near"].idle, by_name["near"].busy) == (1, 0)


def test_a_draining_worker_holding_a_job_counts_as_busy() -> None:
    # A scale-down's worker finishing its job read `slow RUNNING 2 WORKERS 2 IDLE 0 BUSY 1`
    # beside its `draining` row: the job it runs was nobody's, and the sum fell one short.
    from farm.cli.top import Sample, Sampler

    base = {"function": "slow", "cpu": 0, "jobs": 0, "rss": 0, "restarts": 0, "uptime": 1.0}
    rows = [
        {**base, "pid": 31, "slot": 0, "state": "busy", "job": "H:vm:1", "busy_for": 8.1},
        {**base, "pid": 32, "slot": 1, "state": "draining", "job": "H:vm:2", "busy_for": 8.1},
        {**base, "pid": 33, "slot": 2, "state": "draining"},  # no job: it exits; in neither
    ]
    fn = (("function", "slow"),)
    server: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("farm_jobs_running", fn): 2.0,
        ("farm_workers", fn): 2.0,  # registered: the two with a job
    }
    (slow,) = Sampler("/nonexistent").functions(Sample(0.0, rows, server, None, server=True))
    assert (slow.idle, slow.busy) == (0, 2)
    assert slow.workers == slow.idle + slow.busy and slow.running == slow.busy


def test_a_frame_on_an_80_column_terminal_cuts_no_number() -> None:
    # rich shrank every column alike to fit 80 columns: 12345.6 jobs/s read "1234…", a
    # count cut short reads ten times smaller; "farm.…" and "farm.…" were two functions.
    names = ["farm.python", "farm.pythonic", "a_function_named_at_length_for_its_service"]
    functions = [
        FunctionRow(
            name=name,
            queued=123456,
            running=16,
            workers=16,
            idle=0,
            busy=16,
            rate=12345.6,
            p50=0.012,
            p99=1.5,
            failures=987654,
            refused=0,
            dropped=0,
        )
        for name in names
    ]
    busy = {**ROWS[1], "job": "H:worker-01.example.com:2956218124", "jobs": 1234567}
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(frame(functions, [*ROWS, busy], status="farm", width=80))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    table = lines[1 : 1 + 1 + len(names)]
    for name, line in zip(sorted(names), table[1:], strict=True):
        cells = line.split()
        assert name.startswith(cells[0].rstrip("…")), line
        assert len(cells[0]) >= min(len(name), 12), line  # "farm.python", "farm.pythonic"
        assert "123456" in cells and "12345.6" in cells and "987654" in cells, line
    assert any("1234567" in line.split() for line in lines), lines
    assert any("left out" in line for line in lines), lines  # what did not fit is named


def queued_functions(count: int, name: str) -> list[FunctionRow]:
    """``count`` functions named ``name.format(i)``, the i-th with i jobs queued, one idle
    worker each, nothing else: rows that fill a screen's height, not its width."""
    return [
        FunctionRow(
            name=name.format(i),
            queued=i,
            running=0,
            workers=1,
            idle=1,
            busy=0,
            rate=None,
            p50=None,
            p99=None,
            failures=0,
            refused=0,
            dropped=0,
        )
        for i in range(count)
    ]


def test_many_functions_leave_the_processes_room_on_the_screen() -> None:
    # 60 functions on a 30-line screen filled it: the process table and the keys line
    # were cut off below, and `farm top` showed no process at all.
    functions = queued_functions(60, "fn{:02}")
    processes = [{**ROWS[2], "pid": 100 + i, "slot": i} for i in range(16)]
    console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(frame(functions, processes, status="farm", height=30, width=120, sort="queued"))
    lines = console.export_text().splitlines()
    assert len(lines) <= 30, lines
    assert lines[-1].startswith("q quit"), lines
    narrow = Console(width=60, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    narrow.print(frame(functions, processes, status="farm " * 20, height=24, width=60))
    assert len(narrow.export_text().splitlines()) <= 24  # a caption, the keys: one line each
    assert lines[2].split()[0] == "fn59"  # the top of the sort order is what is kept
    assert any(line.split()[:1] == ["PID"] for line in lines), lines
    shown = [line.split()[0] for line in lines if line.split()[:1] and line.split()[0].isdigit()]
    assert shown == [str(pid) for pid in range(100, 111)], lines  # 11 of 16: half the room
    assert sum("more (a taller terminal shows them)" in line for line in lines) == 2, lines


def test_cpu_percent_leaves_out_a_slot_whose_process_was_replaced() -> None:
    # farm_worker_cpu_seconds_total starts over with each process of a slot, and top took a
    # lower reading for a replacement: one that had used more than the process before it
    # (a worker crashed at boot, its successor busy at once) was drawn with the difference.
    from farm.cli.top import Sample, Sampler

    def reading(when: float, pids: dict[int, int], cpu: dict[int, float]) -> Sample:
        base = {"function": "resize", "cpu": 0, "state": "busy", "jobs": 0, "rss": 0}
        rows = [{**base, "pid": pid, "slot": slot, "restarts": 0} for slot, pid in pids.items()]
        metrics = {
            ("farm_worker_cpu_seconds_total", (("pool", "resize"), ("slot", str(slot)))): used
            for slot, used in cpu.items()
        }
        return Sample(when, rows, metrics, None, server=True)

    sampler = Sampler("/nonexistent")
    sampler.history.append(reading(100.0, {0: 41, 1: 42}, {0: 10.0, 1: 0.2}))
    # Slot 0 kept its process, which used 2.5 s of CPU in 5 s; slot 1's crashed and its
    # successor has used 3.0 s since it started, more than the 0.2 s of the one before.
    now = reading(105.0, {0: 41, 1: 43}, {0: 12.5, 1: 3.0})
    # `farm restart`'s successor of slot 0, starting beside it: listed after it, in its slot
    now.processes.append({**now.processes[0], "pid": 44, "state": "starting"})
    sampler.history.append(now)
    assert sampler.cpu(now) == {("resize", 0): pytest.approx(50.0)}


def test_metrics_takes_host_port_or_an_http_url() -> None:
    from farm.cli.app import metrics_url

    assert metrics_url("127.0.0.1:9730") == "http://127.0.0.1:9730/metrics"
    assert metrics_url("[::1]:9730") == "http://[::1]:9730/metrics"
    assert metrics_url("https://h:9730/x") == "https://h:9730/x"


def test_a_narrow_terminal_names_every_column_it_leaves_out() -> None:
    # The note under a table was cut to one line: at 40 columns it read "IDLE, BUSY, JOBS/S,
    # P50, P99, FAIL…", and FAILED, REFUSED, DROPPED were never named.
    functions = queued_functions(8, "fn{}")
    processes = [{**ROWS[2], "pid": 100 + i, "slot": i} for i in range(8)]
    for height in (None, 24):
        console = Console(width=40, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(frame(functions, processes, status="farm", height=height, width=40))
        lines = console.export_text().splitlines()
        assert all(len(line) <= 40 for line in lines), lines
        assert not any("…" in line and "more" not in line for line in lines[:-1]), lines
        words = set(" ".join(lines).replace(",", " ").split())
        for column in ("IDLE", "BUSY", "JOBS/S", "P99", "FAILED", "REFUSED", "DROPPED"):
            assert column in words, lines
        for column in ("STATE", "JOB", "CPU%", "RSS", "JOBS", "RESTARTS"):
            assert column in words, lines
        if height is not None:  # the wrapped notes take rows' room, not the keys'
            assert len(lines) <= height, lines
            assert lines[-1].startswith("q quit"), lines


def test_ps_columns_line_up_under_wide_and_combining_names() -> None:
    # A pool named 中文 takes four columns of a terminal, not two; ljust counted code
    # points, and every cell right of it in its row stood two columns off its header.
    import unicodedata

    from farm.cli.watch import ps_lines

    def columns(text: str) -> int:
        return sum(
            0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
            for c in text
        )

    base = {"slot": 0, "cpu": 0, "state": "idle", "jobs": 0, "rss": 0, "restarts": 0}
    names = ["plain", "中文", "😀x", "cafe\u0301"]
    rows = [{**base, "pid": 40 + i, "function": n, "uptime": 1.0} for i, n in enumerate(names)]
    header, *lines = ps_lines(rows)
    slot = columns(header[: header.index("SLOT")])
    for name, line in zip(names, lines, strict=True):
        assert columns(line[: line.index(name) + len(name)]) < slot, line
        before_slot = line[: line.index(" 0 ") + 1]  # the SLOT cell's 0
        assert columns(before_slot) == slot, (header, line)


def test_ps_fits_a_narrow_terminal_and_draws_a_wide_one_as_ever() -> None:
    # At 40 columns a busy worker's handle was wrapped by the terminal onto the next row's
    # place: the columns right of STATE go first, then the job goes under its row, and a
    # state or a name is wrapped within its column, never cut.
    from farm.cli.rows import cells
    from farm.cli.watch import ps_lines

    base = {"slot": 0, "cpu": 1, "jobs": 3, "rss": 2**24, "restarts": 0, "uptime": 5.0}
    host = "H:a-host-name-long-enough.example.internal:2827888024"
    rows = [
        {**base, "pid": 4001, "function": "supervisor", "slot": None, "state": "running"},
        {**base, "pid": 4002, "function": "slow", "state": "busy", "job": host, "busy_for": 1.5},
        {**base, "pid": 4003, "function": "thumbnail_resize", "state": "idle"},
        {**base, "pid": 4004, "function": "far", "state": "running", "checked": False},
        {**base, "pid": None, "function": "bad", "state": "failing", "last_exit": "x " * 40},
    ]
    assert ps_lines(rows, 400) == ps_lines(rows)  # wide enough: as it always was
    for width in (40, 50, 60, 80, 100):
        lines = ps_lines(rows, width)
        assert all(cells(line) <= width for line in lines), (width, lines)
        text = "".join(line.strip() for line in lines)
        for fact in ("4001", "4002", "4003", "4004", "thumbnail_resize", host, "(1.5s)"):
            assert fact in text, (width, lines)
        assert "running (not checked)" in " ".join(" ".join(lines).split()), lines
        header = lines[0].split()
        assert header[:2] == ["PID", "FUNCTION"] and "STATE" in header, (width, lines)
        left_out = [
            c for c in ("SLOT", "CPU", "JOBS", "RSS", "RESTARTS", "UPTIME") if c not in header
        ]
        if left_out:  # named under the table
            assert f"{', '.join(left_out)} left out" in " ".join(lines), (width, lines)
    assert ps_lines(rows, 40)[0].split() == ["PID", "FUNCTION", "STATE"]


def test_farm_ps_fitting_leaves_a_table_narrower_than_its_headers_alone() -> None:
    # Below PID, FUNCTION and STATE's headers (20 columns) no line fits whatever is done; the
    # job line and the note were cut into one or two characters a line (42 lines at 10).
    from farm.cli.watch import ps_lines

    base = {"slot": 0, "cpu": 1, "jobs": 3, "rss": 2**24, "restarts": 0, "uptime": 5.0}
    rows = [{**base, "pid": 4002, "function": "slow", "state": "busy", "job": "H:vm:1"}]
    for rows_ in (rows, []):
        assert ps_lines(rows_, 10) == ps_lines(rows_)


def test_a_long_reason_is_folded_in_one_pass() -> None:
    # A worker's last line (its reason) may be 64 KiB: each character is measured once, so
    # the folded lines cover it whole, none wider than asked.
    from farm.cli.rows import cells
    from farm.cli.watch import _folded

    text = "é" * 30_000 + " tail 中文 x"
    lines = _folded(text, 80)
    assert all(cells(line) <= 80 for line in lines)
    assert "".join(line.strip() for line in lines).replace(" ", "") == text.replace(" ", "")
