"""The tables of farm's live view: `farm top` draws both, `farm ps --watch` the process table.

Pure functions from what the farm already reports -- ``farm ps`` rows from the control
socket, and numbers read from the metrics endpoint (rows.py) -- to rich renderables.
Nothing here does I/O or keeps state, so any command (or test) can draw a frame from rows
it has. Only the live views import this module, so other commands never load rich.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from farm.cli.rows import SORT_LETTERS, FunctionRow, seconds, state_text

__all__ = ["function_table", "process_table", "frame"]


def _mib(value: int | None) -> str:
    return f"{value / 2**20:.1f}M" if value else "-"


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _header(label: str, key: str | None, sort: str) -> str:
    return f"{label}{_sort_mark()}" if key == sort else label


def _sort_mark() -> str:
    """The sorted column's mark: ▼, or "v" where standard output's encoding (a locale's
    that is not UTF-8) has no ▼, written escaped (\\u25bc) and six cells wide."""
    try:
        "▼".encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return "v"
    return "▼"


#: A text column (a name, a job handle) is cut with "…" to no fewer cells than this before
#: columns on the right are left out to fit a narrow terminal.
MIN_TEXT = 12
#: Cells between two columns (rich's padding of one on each side).
GAP = 2


@dataclass(frozen=True)
class _Column:
    label: str
    key: str | None  # the sort key it shows, if any (its header is marked)
    text: bool = False  # left-aligned text that may be cut with "…"; a number never is


def _table(
    columns: Sequence[_Column],
    rows: Sequence[Sequence[str | Text]],
    sort: str,
    width: int | None,
    rows_left: int = 0,
) -> Table:
    """``rows`` under ``columns``, fitted to ``width`` cells (None: as wide as they are),
    its caption saying that ``rows_left`` more did not fit (a screen's height).

    Left to rich, every column shrank alike: at 80 columns 123456 queued jobs read "1234…"
    and two functions named alike were both "farm.…". Here text columns are cut first, to
    MIN_TEXT, then the columns on the right that still do not fit are left out, and the
    caption names them: a number is shown whole or not at all."""
    heads = [_header(c.label, c.key, sort) for c in columns]
    natural = [
        max([cell_len(head)] + [cell_len(_plain(row[i])) for row in rows])
        for i, head in enumerate(heads)
    ]
    widths, shown = natural, len(columns)
    while width is not None and shown > 1:
        fitted = _shrunk(natural[:shown], columns[:shown], heads, width)
        if fitted is not None:
            widths = fitted
            break
        shown -= 1
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for column, head, cells in zip(columns[:shown], heads, widths, strict=False):
        table.add_column(
            head,
            justify="left" if column.text else "right",
            width=cells,
            no_wrap=True,
            overflow="ellipsis",
        )
    for row in rows:
        table.add_row(*row[:shown])
    # One caption of both notes, wrapped once: the rows' first.
    notes = [f"… {rows_left} more (a taller terminal shows them)"] if rows_left > 0 else []
    if shown < len(columns):
        left_out = ", ".join(c.label for c in columns[shown:])
        notes.append(f"{left_out} left out (a wider terminal shows them)")
    if notes:
        table.caption = _caption(" · ".join(notes), table)
    return table


def _caption(note: str, table: Table) -> Text:
    """``note`` wrapped to ``table``'s width (rich draws a caption no wider than its table):
    cut to one line with "…", the note of left-out columns lost the very columns it names
    on a narrow terminal ("IDLE, BUSY, JOBS/S, P50, P99, FAIL…" at 40). ``frame`` counts
    its lines (``caption_lines``)."""
    cells = [c.width for c in table.columns if c.width is not None]
    width = sum(cells) + GAP * (len(cells) - 1) if cells else 0
    lines = textwrap.wrap(note, width, break_on_hyphens=False) if width > 0 else [note]
    return Text("\n".join(lines), no_wrap=True, overflow="ellipsis")


def caption_lines(table: Table) -> int:
    """How many lines ``table``'s caption takes (0 without one)."""
    caption = table.caption
    if not isinstance(caption, Text):  # None: a caption here is always ``_caption``'s
        return 0
    return caption.plain.count("\n") + 1


def _shrunk(
    natural: list[int], columns: Sequence[_Column], heads: list[str], width: int
) -> list[int] | None:
    """Column widths within ``width``, text columns cut (the widest first) down to
    MIN_TEXT or their header; None if they do not fit even so."""
    widths = list(natural)
    floors = [
        min(w, max(MIN_TEXT, cell_len(h))) if c.text else w
        for w, c, h in zip(widths, columns, heads, strict=False)
    ]
    excess = sum(widths) + GAP * (len(widths) - 1) - width
    while excess > 0:
        cuttable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not cuttable:
            return None
        widest = max(cuttable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def function_table(
    rows: Sequence[FunctionRow],
    *,
    sort: str = "name",
    width: int | None = None,
    limit: int | None = None,
) -> Table:
    """One row per function: queues, workers, throughput, run-time quantiles, failures,
    and submits that got no answer (refused, dropped); the first ``limit`` rows in the
    sort order, fitted to ``width`` cells."""
    columns = [
        _Column("FUNCTION", "name", text=True),
        _Column("QUEUED", "queued"),
        _Column("RUNNING", None),
        _Column("WORKERS", None),
        _Column("IDLE", None),
        _Column("BUSY", None),
        _Column("JOBS/S", "rate"),
        _Column("P50", None),
        _Column("P99", None),
        _Column("FAILED", None),
        _Column("REFUSED", None),
        _Column("DROPPED", None),
    ]
    order: dict[str, Any] = {
        "queued": lambda r: (-(r.queued or 0), r.name),
        "rate": lambda r: (-(r.rate or 0.0), r.name),
    }
    cells: list[list[str | Text]] = [
        [
            Text(r.name),  # Text: a name is never read as markup or :emoji:
            _count(r.queued),
            _count(r.running),
            _count(r.workers),
            str(r.idle),
            str(r.busy),
            "-" if r.rate is None else f"{r.rate:.1f}",
            seconds(r.p50),
            seconds(r.p99),
            Text(_count(r.failures), style="red" if r.failures else ""),
            Text(_count(r.refused), style="red" if r.refused else ""),
            Text(_count(r.dropped), style="yellow" if r.dropped else ""),
        ]
        for r in sorted(rows, key=order.get(sort, lambda r: r.name))
    ]
    shown = cells if limit is None else cells[: max(limit, 0)]
    return _table(columns, shown, sort, width, len(cells) - len(shown))


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def process_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    sort: str = "name",
    cpu: Mapping[tuple[str, int], float] | None = None,
    limit: int | None = None,
    width: int | None = None,
) -> Table:
    """One row per process, from ``farm ps`` rows (the control socket's ``ps`` request).

    ``cpu`` maps (pool, slot) to CPU % (from two scrapes of the metrics endpoint); without
    it the column shows "-". ``limit`` keeps the first rows that fit a screen, ``width``
    the columns that fit its width.
    """
    cpu = cpu or {}

    def percent(r: Mapping[str, Any]) -> float | None:
        return cpu.get((r["function"], r["slot"])) if r.get("slot") is not None else None

    columns = [
        _Column("PID", None),
        _Column("FUNCTION", "name", text=True),
        _Column("SLOT", None),
        _Column("CORE", None),
        _Column("STATE", None, text=True),
        _Column("JOB", None, text=True),
        _Column("AGE", None),
        _Column("CPU%", "cpu"),
        _Column("RSS", "rss"),
        _Column("JOBS", None),
        _Column("RESTARTS", "restarts"),
    ]

    def by_name(r: Mapping[str, Any]) -> tuple[Any, ...]:
        slot = r.get("slot")
        return (r["function"], -1 if slot is None else slot, r.get("pid") or 0)

    order: dict[str, Any] = {
        "cpu": lambda r: (-(percent(r) or 0.0), by_name(r)),
        "rss": lambda r: (-(r.get("rss") or 0), by_name(r)),
        "restarts": lambda r: (-(r.get("restarts") or 0), by_name(r)),
    }
    ordered = sorted(rows, key=order.get(sort, by_name))
    shown = ordered if limit is None else ordered[: max(limit, 0)]
    cells: list[list[str | Text]] = []
    for r in shown:
        pct = percent(r)
        state = str(r.get("state", ""))
        cells.append(
            [
                _cell(r.get("pid")),
                Text(str(r["function"])),  # Text: never read as markup or :emoji: (H:x:9)
                _cell(r.get("slot")),
                _cell(r.get("cpu")),
                Text(state_text(r), style=_STATE_STYLE.get(state, "")),
                # A job whose server has died since: the worker runs it on for nobody.
                Text(_cell(r.get("job")) + (" (server gone)" if r.get("server_gone") else "")),
                seconds(r.get("busy_for")) if r.get("busy_for") is not None else "-",
                "-" if pct is None else f"{pct:.0f}",
                _mib(r.get("rss")),
                _cell(r.get("jobs")),
                _cell(r.get("restarts")),
            ]
        )
    return _table(columns, cells, sort, width, len(ordered) - len(shown))


_STATE_STYLE = {
    "busy": "green",
    "failing": "bold red",
    "backoff": "yellow",
    "stopped": "red",
    "killing": "red",
    "draining": "yellow",
    "stopping": "yellow",
}


def frame(
    functions: Sequence[FunctionRow] | None,
    processes: Sequence[Mapping[str, Any]],
    *,
    sort: str = "name",
    cpu: Mapping[tuple[str, int], float] | None = None,
    status: str = "",
    height: int | None = None,
    width: int | None = None,
    keys: bool = True,
) -> RenderableType:
    """A whole screen: a status line, the function table (None: left out), the process
    table cut to ``height`` lines, both fitted to ``width`` cells, and (``keys``) which keys
    do what."""
    tables = _tables(functions, processes, sort, cpu, height, width)
    # A caption wrapped past its one line (the columns a narrow terminal leaves out, each
    # named) takes the rows' room: laid out again on fewer lines, or the keys fell off. Rows
    # cut add "… N more" to a caption, which may wrap once more: a few rounds at most.
    counted = 0
    for _ in range(3):
        extra = sum(max(0, caption_lines(t) - 1) for t in tables if t is not None)
        if height is None or extra <= counted:
            break
        counted = extra
        tables = _tables(functions, processes, sort, cpu, height - extra, width)
    function_rows, process_rows = tables
    parts: list[RenderableType] = []
    if status:
        parts.append(Text(status, style="bold", no_wrap=True, overflow="ellipsis"))
    if function_rows is not None:
        parts += [function_rows, Text("")]
    parts.append(process_rows)
    if keys:
        letters = " ".join(f"{k}:{v}" for k, v in SORT_LETTERS.items())
        keys_line = f"q quit · s next sort · {letters}"
        parts.append(Text(keys_line, style="dim", no_wrap=True, overflow="ellipsis"))
    else:
        parts.append(Text(""))  # frames printed one after another stay apart
    return Group(*parts)


def _tables(
    functions: Sequence[FunctionRow] | None,
    processes: Sequence[Mapping[str, Any]],
    sort: str,
    cpu: Mapping[tuple[str, int], float] | None,
    height: int | None,
    width: int | None,
) -> tuple[Table | None, Table]:
    """``frame``'s two tables, their rows cut to ``height`` lines, captions counted as one."""
    limit = None if height is None else max(1, height - 6)  # status, keys, a header...
    if functions is None:
        return None, process_table(processes, sort=sort, cpu=cpu, limit=limit, width=width)
    kept = None
    if height is not None:
        # Two headers, two captions, the blank line, status and keys take 7 lines; of
        # the rest, the processes get up to half when the functions would take it all
        # (60 functions left no line of a 30-line screen to them, nor to the keys).
        room = max(2, height - 7)
        if len(functions) + len(processes) > room:
            kept = max(1, min(len(functions), room - min(len(processes), room // 2)))
        limit = max(1, room - min(len(functions), kept or len(functions)))
    return (
        function_table(functions, sort=sort, width=width, limit=kept),
        process_table(processes, sort=sort, cpu=cpu, limit=limit, width=width),
    )
