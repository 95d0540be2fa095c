"""``Executor.map(..., progress=True)``: a progress bar on a terminal, silence elsewhere.

The bar counts calls as they finish, in any order (a done-callback per job,
which runs in the pump thread; rich's Progress takes its own lock), while
``map`` still yields results in order. It is drawn with rich (which typer
brings) on standard error, and only when standard error is a terminal:
under a pipe, a log file or a test runner's capture nothing is written.
rich is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["on_terminal", "with_progress"]

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether standard error is a terminal (where a bar may be drawn)."""
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def with_progress(
    results: Iterator[T], futures: list[Future[Any]], sizes: list[int], description: str
) -> Iterator[T]:
    """``results``, with a bar that advances by ``sizes[i]`` calls when ``futures[i]`` is done;
    ``results`` itself when standard error is no terminal."""
    if not on_terminal():
        return results
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
    )
    task = progress.add_task(description, total=sum(sizes))
    for future, size in zip(futures, sizes, strict=True):
        future.add_done_callback(lambda _, n=size: progress.advance(task, n))  # type: ignore[misc]
    return _shown(results, progress)


def _shown(results: Iterator[T], progress: Any) -> Iterator[T]:
    with progress:  # drawn from the first next() until the last result, or the caller stops
        yield from results
