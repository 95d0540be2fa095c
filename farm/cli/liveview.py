"""The tables of farm's live view: `farm top` draws both, `farm ps --watch` the process table.

Pure functions from what the farm already reports -- ``farm ps`` rows from the control
socket, and numbers read from the metrics endpoint (rows.py) -- to rich renderables.
Nothing here does I/O or keeps state, so any command (or test) can draw a frame from rows
it has. Only the live views import this module, so other commands never load rich.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
