"""The tables of farm's live view: `farm top` draws both, `farm ps --watch` the process table.

Pure functions from what the farm already reports -- ``farm ps`` rows from the control
socket, and numbers read from the metrics endpoint -- to rich renderables. Nothing here
does I/O or keeps state, so any command (or test) can draw a frame from rows it has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = [
    "FunctionRow",
    "SORT_KEYS",
    "SORT_LETTERS",
    "function_table",
    "process_table",
    "frame",
    "quantile",
    "seconds",
    "state_text",
]

#: What rows can be sorted by; a key a table has no column for sorts it by name.
SORT_KEYS = ("name", "queued", "rate", "cpu", "rss", "restarts")
#: The key press that picks each sort key in the live view (`s` cycles through them).
SORT_LETTERS = {"n": "name", "u": "queued", "r": "rate", "c": "cpu", "m": "rss", "t": "restarts"}


@dataclass(frozen=True, kw_only=True)
class FunctionRow:
    """One function as the server and the supervisor see it now."""

    name: str
    # The server's numbers; None when the server's part of the metrics is missing (metrics
    # off, or the server did not answer the scrape): a 0 there would read as the truth.
    queued: int | None
    running: int | None
    workers: int | None  # connections that registered it with the server
    idle: int  # the supervisor's worker processes of the pools serving it: without a job
    busy: int  # ... and with one (a command worker's, as the job server says)
    rate: float | None  # jobs answered per second over the last few seconds
    p50: float | None  # run time (seconds) from the histogram's buckets
    p99: float | None
    failures: int | None  # failed (timeouts included) + exceptions
    # Submits refused with QUEUE_ERROR (every reason), and foreground jobs dropped when all
    # their clients left: neither reaches an answer, so neither is in the rate or failures.
    refused: int | None
    dropped: int | None


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a histogram given as cumulative (upper bound, count) pairs, as
    PromQL's histogram_quantile computes it (linear within a bucket); None with no data."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    low, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return low  # in the open bucket: its lower edge is all we know
            if count == below:
                return bound
            return low + (bound - low) * (rank - below) / (count - below)
        low, below = bound, count
    return low


def seconds(value: float | None) -> str:
    """A duration short enough for a column: 0.4ms, 120ms, 2.5s, 3m."""
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1000:.2f}ms"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.0f}m"


def _mib(value: int | None) -> str:
    return f"{value / 2**20:.1f}M" if value else "-"


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _header(label: str, key: str | None, sort: str) -> str:
    return f"{label}▼" if key == sort else label


def function_table(rows: Sequence[FunctionRow], *, sort: str = "name") -> Table:
    """One row per function: queues, workers, throughput, run-time quantiles, failures,
    and submits that got no answer (refused, dropped)."""
    columns = [
        ("FUNCTION", "name"),
        ("QUEUED", "queued"),
        ("RUNNING", None),
        ("WORKERS", None),
        ("IDLE", None),
        ("BUSY", None),
        ("JOBS/S", "rate"),
        ("P50", None),
        ("P99", None),
        ("FAILED", None),
        ("REFUSED", None),
        ("DROPPED", None),
    ]
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for label, key in columns:
        table.add_column(_header(label, key, sort), justify="left" if key == "name" else "right")
    order: dict[str, Any] = {
        "queued": lambda r: (-(r.queued or 0), r.name),
        "rate": lambda r: (-(r.rate or 0.0), r.name),
    }
    for r in sorted(rows, key=order.get(sort, lambda r: r.name)):
        table.add_row(
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
        )
    return table


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def process_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    sort: str = "name",
    cpu: Mapping[tuple[str, int], float] | None = None,
    limit: int | None = None,
) -> Table:
    """One row per process, from ``farm ps`` rows (the control socket's ``ps`` request).

    ``cpu`` maps (pool, slot) to CPU % (from two scrapes of the metrics endpoint); without
    it the column shows "-". ``limit`` keeps the first rows that fit a screen.
    """
    cpu = cpu or {}

    def percent(r: Mapping[str, Any]) -> float | None:
        return cpu.get((r["function"], r["slot"])) if r.get("slot") is not None else None

    columns = [
        ("PID", None),
        ("FUNCTION", "name"),
        ("SLOT", None),
        ("CORE", None),
        ("STATE", None),
        ("JOB", None),
        ("AGE", None),
        ("CPU%", "cpu"),
        ("RSS", "rss"),
        ("JOBS", None),
        ("RESTARTS", "restarts"),
    ]
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for label, key in columns:
        left = label in ("FUNCTION", "STATE", "JOB")
        table.add_column(_header(label, key, sort), justify="left" if left else "right")

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
    for r in shown:
        pct = percent(r)
        state = str(r.get("state", ""))
        table.add_row(
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
        )
    if len(shown) < len(ordered):
        table.caption = f"… {len(ordered) - len(shown)} more (a taller terminal shows them)"
    return table


def state_text(row: Mapping[str, Any]) -> str:
    """A `farm ps` row's state as shown: a command worker counted as serving where no
    server could show its registration (remote servers only) says so, so that no jobs and
    no job in hand are not read as idle."""
    state = str(row.get("state", ""))
    return f"{state} (not checked)" if row.get("checked") is False else state


_STATE_STYLE = {
    "busy": "green",
    "failing": "bold red",
    "backoff": "yellow",
    "stopped": "red",
    "killing": "red",
    "draining": "yellow",
}


def frame(
    functions: Sequence[FunctionRow] | None,
    processes: Sequence[Mapping[str, Any]],
    *,
    sort: str = "name",
    cpu: Mapping[tuple[str, int], float] | None = None,
    status: str = "",
    height: int | None = None,
    keys: bool = True,
) -> RenderableType:
    """A whole screen: a status line, the function table (None: left out), the process
    table cut to ``height`` lines, and (``keys``) which keys do what."""
    parts: list[RenderableType] = []
    if status:
        parts.append(Text(status, style="bold"))
    used = 4  # the status line, the keys line and the blank lines between
    if functions is not None:
        parts += [function_table(functions, sort=sort), Text("")]
        used += len(functions) + 2
    limit = None if height is None else max(1, height - used - 2)
    parts.append(process_table(processes, sort=sort, cpu=cpu, limit=limit))
    if keys:
        letters = " ".join(f"{k}:{v}" for k, v in SORT_LETTERS.items())
        parts.append(Text(f"q quit · s next sort · {letters}", style="dim"))
    else:
        parts.append(Text(""))  # frames printed one after another stay apart
    return Group(*parts)
