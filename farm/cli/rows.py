"""What farm's live view and `farm ps` show, before anything is drawn.

Rows, states and sort keys as plain values, and the sums over a metrics reading that
fill them: `farm ps` prints its lines from them and `farm top` samples into them without
importing rich, which only liveview.py's drawing needs (rich costs a command that draws
nothing a tenth of a second).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FunctionRow",
    "SORT_KEYS",
    "SORT_LETTERS",
    "Samples",
    "answered",
    "buckets",
    "cells",
    "held_as",
    "ljust",
    "quantile",
    "seconds",
    "state_text",
    "total",
]

#: A metrics endpoint read: each sample by (name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

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


def cells(text: str) -> int:
    """The columns a terminal gives ``text``: two for a wide character (CJK, most emoji:
    East Asian Wide or Fullwidth), none for a combining one. A table padded by len() left
    every cell after a pool named 中文 two columns off its header."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def ljust(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (``cells``)."""
    return text + " " * (width - cells(text))


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


def state_text(row: Mapping[str, Any]) -> str:
    """A `farm ps` row's state as shown: a command worker counted as serving where no
    server could show its registration (remote servers only) says so, so that no jobs and
    no job in hand are not read as idle."""
    state = str(row.get("state", ""))
    return f"{state} (not checked)" if row.get("checked") is False else state


def held_as(row: Mapping[str, Any]) -> str:
    """A process's part in its function's IDLE and BUSY columns: its state, except that
    one draining with a job in hand is busy (the server counts its job as running: a
    scale-down's worker finishing one read as neither, and IDLE + BUSY fell short of
    WORKERS), and a command worker is "running" (connected), with the job the server
    says it holds, if any: busy with one, idle without; "running" where the server could
    not say (its registration not checked: remote servers only)."""
    state = str(row["state"])
    if state == "draining":
        return "busy" if row.get("job") else state
    if state != "running" or row.get("checked") is False:
        return state
    return "busy" if row.get("job") else "idle"


def total(m: Samples, name: str, function: str) -> float:
    """``name`` summed over every series of ``function`` (its priorities)."""
    return sum(v for (n, labels), v in m.items() if n == name and ("function", function) in labels)


def answered(m: Samples, function: str) -> float:
    return sum(
        total(m, f"farm_jobs_{what}_total", function)
        for what in ("completed", "failed", "exceptions")
    )


def buckets(m: Samples, histogram: str, function: str) -> list[tuple[float, float]]:
    """The cumulative (upper bound, count) pairs of one function's histogram."""
    out = [
        (float(dict(labels)["le"]), v)
        for (n, labels), v in m.items()
        if n == f"{histogram}_bucket" and ("function", function) in labels
    ]
    return sorted(out)
