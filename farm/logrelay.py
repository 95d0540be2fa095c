"""A supervised Python worker's stdout and stderr, which the supervisor reads, written on
its log: the worker's own records as they are, what its jobs wrote past its logger as the
worker's output (farm.pools.reports). The two share one pipe, so that their order is kept;
a secret mark before each of the worker's own lines tells them apart."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from farm.logs import MARK_LEVELS, relays_json, write_relayed

__all__ = ["relay_lines"]


def relay_lines(
    lines: list[str],
    mark: str,
    stray: Callable[[str, int], None],
    *,
    continued: int | None = None,
    cut: bool = False,
) -> int | None:
    """Write a Python worker's log records (its stdout and stderr, which the supervisor
    reads) on this process's log stream (farm.logs.write_relayed). Its records follow
    ``mark``, the secret its formatter puts before each line, then the line's level, a
    letter (farm.logs.setup_logging's ``mark``): written on without either, their control
    characters escaped, and in the JSON format only a JSON object (`jq` stops at the first
    line it cannot parse, and every record after it went unseen). What a job wrote past the
    logger (``os.write``, a C library, a child program) goes to ``stray`` (at INFO), which
    logs it as a record of this process's that names the worker: relayed as it came, a
    job's line shaped as the supervisor's own ("farm[PID] ERROR job server ... died") read
    as one, and in JSON any line that parsed as an object passed for a record of the
    farm's.

    The mark may come anywhere in a line: after a child's output with no newline ("printf
    x"), the worker's next record is glued to it, and that line went whole to ``stray``,
    the mark in it for any child that could read the log (to forge the worker's records
    with). What is before a line's first mark is stray, each mark starts a record of the
    worker's, and no mark is written on. A rest's level, and a stray record's, is the
    letter's: never read from what the line says (a traceback's line says what its
    exception's message did, "[1] CRITICAL ..." as well).

    ``continued`` (a level): the first line is the rest of a record of the worker's own
    whose line OutputLines cut at LONGEST_LINE. A rest is no record (no JSON object; in
    text, it starts with whatever the record quoted, which may look like any line): it
    goes to ``stray`` at the record's level, not as output at INFO; so does a record's
    cut start in JSON. ``cut``: the last line is cut so; then the level for its rest is
    returned, where it is the worker's record (else None)."""
    run: list[str] = []
    level: int | None = None
    for index, line in enumerate(lines):
        before, *own = line.split(mark) if mark else (line,)
        if index == 0 and continued is not None:
            level = continued
            if before:
                write_relayed(run)
                run = []
                stray(before, continued)
        elif before or not own:
            level = None
            write_relayed(run)
            run = []
            stray(before, logging.INFO)
        for record in own:
            # The letter after the mark is its record's level (farm.logs._Marked), which
            # no job can write: never read from the line, a traceback's message says anything.
            level = MARK_LEVELS.get(record[:1], logging.INFO)
            record = record[1:]
            if not record:  # two marks, or one with its level at the end: nothing said
                continue
            if not relays_json() or _json_object(record):
                run.append(record)
                continue
            write_relayed(run)
            run = []
            stray(record, level)
    write_relayed(run)
    return level if cut else None


def _json_object(line: str) -> bool:
    """Whether ``line`` is a JSON object, after the journal priority a worker's record
    starts with under systemd (``<4>{...}``: _JournalPriority)."""
    if line[:1] == "<" and line[2:3] == ">" and line[1:2].isdigit():
        line = line[3:]
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
