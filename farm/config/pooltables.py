"""Reading farm.toml's ``[functions.NAME]`` tables: a pool of a Python target or of a
command, its size and limits, and the functions it registers.

:class:`PoolReader` is the part of :class:`farm.config.parse.Validator` that owns those
tables; each refusal names the pool's own key (``functions.resize.workers``).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

from farm.commandspec import parse_command, parse_stop_signal
from farm.config.capacity import MAX_WORKERS, count_problem
from farm.config.model import FunctionConfig
from farm.config.reader import TableReader
from farm.protocol.codec import MAX_CLIENT_ID, MAX_TIMEOUT, name_problem
from farm.targets import normal_form_hint, target_problem, target_shaped

__all__ = [
    "PoolReader",
    "COMMAND_KEYS",
    "POOL_KEYS",
    "KILL_RSS_FACTOR",
    "MAX_GRACE",
    "MAX_POOL_NAME",
    "served_problem",
    "pool_name_problem",
]

#: How a command worker bounds its own jobs or memory, for the refusal of the Python limits.
COMMAND_RECYCLE = (
    "a command worker that exits 0 between jobs (PHP's `if (++$n >= 100) exit(0);`, or"
    " past a memory_get_usage()) is recycled, not crashed (docs/operations.md, Command pools)"
)
#: kill_rss_mb when a pool sets only max_rss_mb: this many times it, rounded up.
KILL_RSS_FACTOR = 1.5
#: Longest graceful_timeout accepted (a day): a stop must end.
MAX_GRACE = 86400
#: Longest name of a pool (its table's key), in UTF-8 bytes: a Python worker's client id is
#: "farm:POOL#SLOT:PID", which must fit the server's MAX_CLIENT_ID (127 bytes; a slot has at
#: most 4 digits, a pid 7).
MAX_POOL_NAME = 64
#: The keys of a [functions.NAME] table; COMMAND_KEYS are for command pools only.
COMMAND_KEYS = ("command", "cwd", "env", "pass_env", "user", "stop_signal", "graceful_timeout")
POOL_KEYS = (
    "target",
    "workers",
    "timeout",
    "max_jobs",
    "max_rss_mb",
    "kill_rss_mb",
    "function",
    "functions",
) + COMMAND_KEYS


def served_problem(name: str) -> str | None:
    """Why a pool may not serve the function ``name``, worded to follow "function name";
    None if it may. Any name farm's job server takes (``name_problem``, its one rule:
    Perl's ``App::reverse``, ``é``), but for what the supervisor passes a pool's functions
    on in: admin lines split at spaces (``poolfunctions``, ``claim``) and a command
    worker's ``$FARM_FUNCTION``, comma-separated; and no whitespace of any kind (Unicode's
    too) at its start or end: ``farm scale`` reads a name stripped of it, and a name with
    invisible edges is a mistake (U+00A0 then ``x`` could not be scaled, U+3000 not named)."""
    if (problem := name_problem(name.encode())) is not None:
        return problem[1]
    for sign, use in (
        (" ", "the supervisor names a pool's functions to its server in admin lines split at it"),
        (",", "a command pool's workers read them from $FARM_FUNCTION, split at it"),
    ):
        if sign in name:
            return f"holds {sign!r} ({use})"
    for edge, char in (("starts", name[0]), ("ends", name[-1])):
        if char.isspace():
            return (
                f"{edge} with whitespace {char!r} (unseen where it is shown; farm scale strips it)"
            )
    return None


def pool_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a pool's (a ``[functions.NAME]`` key), worded to follow "a
    pool's name"; None if it may be. What names its workers and a change of its size: at
    most MAX_POOL_NAME bytes, no ``#`` (``POOL#SLOT``: `farm restart`, ``$FARM_WORKER_ID``,
    the workers' log lines and titles) and no ``=`` (`farm scale NAME=COUNT`); and, as the
    function it serves by default, ``served_problem``."""
    # A function such a name cannot be may still be served, by a pool named otherwise.
    elsewhere = '; serve it with function = "..." in a pool named otherwise'
    if len(name.encode()) > MAX_POOL_NAME:
        return (
            f"is longer than {MAX_POOL_NAME} bytes (its workers' client id, farm:POOL#SLOT:PID,"
            f" must fit the job server's {MAX_CLIENT_ID}){elsewhere}"
        )
    for sign, use in (("#", "POOL#SLOT names its workers"), ("=", "farm scale reads NAME=COUNT")):
        if sign in name:
            return f"holds {sign!r} ({use}){elsewhere}"
    return served_problem(name)


class PoolReader(TableReader):
    """Checks one ``[functions.NAME]`` table into a :class:`FunctionConfig`."""

    #: Whether a target's module is looked for (on this process's path): False where the
    #: file is judged by a process whose path is not the farm's (farm.cli.app.refused_config).
    locate_targets = True

    def function(self, name: str, raw: Any, ncpus: int) -> FunctionConfig:
        key = f"functions.{name}"
        if (problem := pool_name_problem(name)) is not None:
            # Quoted as TOML writes such a key, so that the line stays one line: é as it is,
            # a control character (json leaves DEL and C1 raw) escaped.
            quoted = json.dumps(name, ensure_ascii=not name.isprintable())
            raise self.fail(
                f"functions.{quoted}",
                f"a pool's name {problem}",
            )
        if name in POOL_KEYS and not isinstance(raw, dict):  # [functions] with no NAME
            raise self.fail(
                key,
                f"{name} is a pool's key; put it in a [functions.NAME] table, e.g."
                " [functions.reverse]",
            )
        raw = self.table(raw, key, POOL_KEYS)
        if "command" in raw:
            return self.command_pool(name, raw, ncpus)
        if "target" not in raw:
            raise self.fail(
                f"{key}.target",
                'missing; add target = "module:function" (or command = ["php", "worker.php"])',
            )
        for other in COMMAND_KEYS:
            if other in raw:
                raise self.fail(f"{key}.{other}", "applies to command pools only; remove it")
        target = raw["target"]
        if not isinstance(target, str):
            # Checked apart: the shape's hint (normal_form_hint) reads a string, and a
            # number or list there was a TypeError traceback naming no key.
            raise self.fail(
                f"{key}.target", f'must be a string like "module:function", got {target!r}'
            )
        if not target_shaped(target):
            raise self.fail(
                f"{key}.target",
                f'must look like "module:function", got {target!r}' + normal_form_hint(target),
            )
        problem = target_problem(target) if self.locate_targets else None
        if problem:
            raise self.fail(f"{key}.target", problem)
        workers = self.workers(raw, key, ncpus)
        max_rss_mb = self.optional_positive(raw.get("max_rss_mb"), f"{key}.max_rss_mb")
        kill_rss_mb = self.optional_positive(raw.get("kill_rss_mb"), f"{key}.kill_rss_mb")
        if kill_rss_mb is None and max_rss_mb is not None:
            # exact: in floats, a max_rss_mb past 1e308 raised OverflowError, a traceback
            kill_rss_mb = math.ceil(max_rss_mb * Fraction(KILL_RSS_FACTOR))
        elif kill_rss_mb is not None and max_rss_mb is not None and kill_rss_mb < max_rss_mb:
            raise self.fail(
                f"{key}.kill_rss_mb",
                f"must be >= max_rss_mb ({max_rss_mb}), got {kill_rss_mb}; raise it, or"
                f" leave it out for {KILL_RSS_FACTOR:g} x max_rss_mb",
            )
        return FunctionConfig(
            name=name,
            target=target,
            workers=workers,
            auto=raw.get("workers", "auto") == "auto",
            timeout=self.optional_positive(raw.get("timeout"), f"{key}.timeout", MAX_TIMEOUT),
            max_jobs=self.optional_positive(raw.get("max_jobs"), f"{key}.max_jobs"),
            max_rss_mb=max_rss_mb,
            kill_rss_mb=kill_rss_mb,
            serves=self.served(raw, key),
        )

    def command_pool(self, name: str, raw: dict[str, Any], ncpus: int) -> FunctionConfig:
        """A pool of any executable: ``command`` (+ ``cwd``, ``env``, ``user``) instead of
        ``target``; the Python worker's own limits do not apply to it."""
        key = f"functions.{name}"
        for other in ("target", "max_jobs", "max_rss_mb", "kill_rss_mb"):
            if other in raw:
                # What a leaking PHP worker's operator does instead, not only what not to.
                why = {"target": "give either target or command"}.get(
                    other, f"applies to Python workers only; {COMMAND_RECYCLE}"
                )
                raise self.fail(f"{key}.{other}", f"{why}; remove it")
        workers = self.workers(raw, key, ncpus)
        grace = raw.get("graceful_timeout")
        if grace is not None and (
            isinstance(grace, bool)
            or not isinstance(grace, int | float)
            or not 0 <= grace <= MAX_GRACE
        ):
            raise self.fail(
                f"{key}.graceful_timeout",
                f"must be a number of seconds from 0 to {MAX_GRACE}, got {grace!r}",
            )
        return FunctionConfig(
            name=name,
            target="",
            workers=workers,
            auto=raw.get("workers", "auto") == "auto",
            # Seen through the local server's `peers` (farm.pools.commandjobs), which needs
            # its Unix socket: config.rules.command_pools refuses a timeout without one.
            timeout=self.optional_positive(raw.get("timeout"), f"{key}.timeout", MAX_TIMEOUT),
            max_jobs=None,
            max_rss_mb=None,
            command=parse_command(raw, key, str(self.base), self.fail),
            serves=self.served(raw, key),
            stop_signal=parse_stop_signal(raw.get("stop_signal"), f"{key}.stop_signal", self.fail),
            graceful_timeout=None if grace is None else float(grace),
        )

    def workers(self, raw: dict[str, Any], key: str, ncpus: int) -> int:
        """A pool's ``workers``: a count, or "auto" (the default), one per core of ``cpus``."""
        workers = raw.get("workers", "auto")
        if workers == "auto":
            count, fix = ncpus, 'give a count instead of "auto" (one per core of cpus)'
        elif type(workers) is not int or workers < 0:
            raise self.fail(
                f"{key}.workers", f'must be a whole number >= 0 or "auto", got {workers!r}'
            )
        else:
            count, fix = workers, f"lower it to at most {MAX_WORKERS}"
        # Here, not only in capacity_problem over all pools: there the key was "functions".
        problem = count_problem(key.removeprefix("functions."), count)
        if problem:
            raise self.fail(f"{key}.workers", f"{problem}; {fix}")
        return count

    def served(self, raw: dict[str, Any], key: str) -> tuple[str, ...]:
        """``function = "NAME"`` or ``functions = ["A", "B"]``: what the pool registers."""
        if "function" in raw and "functions" in raw:
            raise self.fail(f"{key}.functions", "give function or functions, not both")
        names = raw.get("functions", [raw["function"]] if "function" in raw else [])
        which = f"{key}.functions" if "functions" in raw else f"{key}.function"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise self.fail(which, 'must name functions, e.g. "reverse" or ["App::reverse"]')
        for served in names:
            if (problem := served_problem(served)) is not None:
                raise self.fail(which, f"function name {json.dumps(served)} {problem}")
        if "functions" in raw and not names:
            raise self.fail(which, "is empty; name at least one function")
        return tuple(dict.fromkeys(names))
