"""``Executor.map(..., progress=True)``: a progress bar on a terminal, silence elsewhere.

The bar counts calls as they finish, in any order (a done-callback per job, a
``Prompt`` one, run by the thread that reads the reply; rich's Progress takes its
own lock), while
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

from farm.executor.futures import Prompt

__all__ = ["on_terminal", "Bar"]

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether standard error is a terminal (where a bar may be drawn)."""
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


class Bar:
    """The bar of one map: it advances by a future's calls when that future is done. On no
    terminal it draws nothing and costs nothing (rich is not imported)."""

    def __init__(self, description: str, total: int | None) -> None:
        """``total``: the map's calls; None when they are not known yet (``buffersize``)."""
        self._progress: Any = None
        if not on_terminal():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self._task = self._progress.add_task(description, total=total)

    def track(self, future: Future[Any], size: int) -> None:
        """Count ``size`` calls done when ``future`` is (in the thread that settles it)."""
        if self._progress is not None:
            progress, task = self._progress, self._task
            # Prompt: run by the thread that reads the reply, the caller's too, so that
            # the bar is full when the last result is handed out.
            future.add_done_callback(Prompt(lambda _: progress.advance(task, size)))

    def shown(self, results: Iterator[T]) -> Iterator[T]:
        """``results``, with the bar drawn from the first ``next()`` until the last result
        (or until the caller stops)."""
        return results if self._progress is None else _shown(results, self._progress)


def _shown(results: Iterator[T], progress: Any) -> Iterator[T]:
    with progress:
        yield from results
