"""A supervised Python worker's stdout and stderr, which the supervisor reads, written on
its log: the worker's own records as they are, what its jobs wrote past its logger as the
worker's output (farm.pools.reports). The two share one pipe, so that their order is kept;
a secret mark before each of the worker's own lines tells them apart."""

from __future__ import annotations

import json
from collections.abc import Callable

from farm.logs import relays_json, write_relayed

__all__ = ["relay_lines"]


def relay_lines(lines: list[str], mark: str, stray: Callable[[str], None]) -> None:
    """Write a Python worker's log records (its stdout and stderr, which the supervisor
    reads) on this process's log stream (farm.logs.write_relayed). Its records follow
    ``mark``, the secret its formatter puts before each line (farm.logs.setup_logging's
    ``mark``): written on without it, their control characters escaped, and in the JSON
    format only a JSON object (`jq` stops at the first line it cannot parse, and every
    record after it went unseen). What a job wrote past the logger (``os.write``, a C
    library, a child program) goes to ``stray``, which logs it as a record of this
    process's that names the worker: relayed as it came, a job's line shaped as the
    supervisor's own ("farm[PID] ERROR job server ... died") read as one, and in JSON any
    line that parsed as an object passed for a record of the farm's.

    The mark may come anywhere in a line: after a child's output with no newline ("printf
    x"), the worker's next record is glued to it, and that line went whole to ``stray``,
    the mark in it for any child that could read the log (to forge the worker's records
    with). What is before a line's first mark is stray, each mark starts a record of the
    worker's, and no mark is written on."""
    run: list[str] = []
    for line in lines:
        before, *own = line.split(mark) if mark else (line,)
        if before or not own:
            write_relayed(run)
            run = []
            stray(before)
        for record in own:
            if not record:  # two marks, or one at the end: nothing said
                continue
            if not relays_json() or _json_object(record):
                run.append(record)
                continue
            write_relayed(run)
            run = []
            stray(record)  # a record cut at LONGEST_LINE, say
    write_relayed(run)


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
