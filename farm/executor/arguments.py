"""What ``farm.Executor()`` accepts: its arguments checked as ProcessPoolExecutor checks
them (same errors), the old servers-first form told apart, and the spill settings resolved
from its keywords, the environment and the config."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec, TypeGuard, TypeVar

from farm import cgroups
from farm.client.admin import function_workers
from farm.discovery import executor_spill
from farm.executor import spillsettings
from farm.protocol.checks import check_name
from farm.protocol.codec import RESERVED_PREFIX

__all__ = [
    "QUEUED_PER_WORKER",
    "check_function",
    "check_max_tasks_per_child",
    "check_max_workers",
    "is_servers",
    "keyword_max_workers_checked",
    "old_forms",
    "pool_window",
    "spill_limit",
    "spill_settings",
]

log = logging.getLogger("farm.executor")

P = ParamSpec("P")
R = TypeVar("R")

#: Jobs in flight per worker of the pool for an executor without max_workers (pool_window).
QUEUED_PER_WORKER = 2


def spill_settings(
    key_file: str | None, spill_dir: str | os.PathLike[str] | None, max_spill_mb: int | None
) -> spillsettings.SpillSettings:
    """The executor's spill directory and limit: its keywords, else $FARM_SPILL_DIR and
    $FARM_MAX_SPILL_MB, else ``[executor]`` of the config, else the defaults."""
    configured_dir, configured_mb = executor_spill()
    where = spill_dir or os.environ.get(spillsettings.SPILL_ENV) or configured_dir
    limit, limit_from = spill_limit(max_spill_mb, configured_mb)
    return spillsettings.SpillSettings(
        Path(where) if where else spillsettings.default_spill_dir(key_file), limit, limit_from
    )


def spill_limit(max_spill_mb: int | None, configured_mb: int | None = None) -> tuple[int, str]:
    """The executor's limit in bytes and the setting it came from, which SpillTooLarge
    names: ``max_spill_mb=``, else $FARM_MAX_SPILL_MB, else ``configured_mb`` (the
    config's, checked by its reader), else the default. SpillError naming the setting."""
    variable = os.environ.get(spillsettings.MAX_SPILL_ENV)
    mb: object
    if max_spill_mb is not None:
        setting, mb = "the Executor's max_spill_mb=", max_spill_mb
    elif variable:
        setting, mb = f"${spillsettings.MAX_SPILL_ENV}", variable
    else:
        setting, mb = (
            spillsettings.CONFIG_LIMIT,
            configured_mb or spillsettings.DEFAULT_MAX_SPILL_MB,
        )
    return spillsettings.mb_to_bytes(mb, setting), setting


def is_servers(value: object) -> TypeGuard[str | list[str] | tuple[str, ...]]:
    """A str, or a list or tuple of str: servers passed where max_workers now stands."""
    if isinstance(value, str):
        return True
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def check_max_workers(max_workers: object) -> int | None:
    if max_workers is None:
        return None
    if not isinstance(max_workers, int):
        raise TypeError(f"max_workers must be an int or None, not {max_workers!r}")
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


def keyword_max_workers_checked(init: Callable[P, R]) -> Callable[P, R]:
    """``Executor.__init__`` with a ``max_workers=`` keyword checked before anything else:
    servers in max_workers' place are the old *positional* form alone (``old_forms``), so
    that ``max_workers="4"`` is ProcessPoolExecutor's TypeError, not the server "4:4730".
    A plain signature cannot tell a keyword from a positional argument; the wrapper can, and
    keeps the signature (``functools.wraps``: ``inspect.signature`` follows ``__wrapped__``)."""

    @functools.wraps(init)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if "max_workers" in kwargs:
            check_max_workers(kwargs["max_workers"])
        return init(*args, **kwargs)

    return checked


def check_max_tasks_per_child(max_tasks_per_child: object) -> None:
    if max_tasks_per_child is None:
        return
    if not isinstance(max_tasks_per_child, int):
        raise TypeError("max_tasks_per_child must be an integer")
    if max_tasks_per_child <= 0:
        raise ValueError("max_tasks_per_child must be >= 1")


def old_forms(
    max_workers: object, servers: str | Iterable[str] | None, max_in_flight: int | None
) -> tuple[str | Iterable[str] | None, object]:
    """``(servers, max_workers)`` from the older ways of saying them: servers in
    max_workers' place (DeprecationWarning), and ``max_in_flight`` for ``max_workers``.
    Servers given as ``max_workers=`` are refused before this (``keyword_max_workers_checked``)."""
    if is_servers(max_workers):  # farm.Executor("unix:/run/farm/gearman.sock"), the old way
        if servers is not None:
            raise TypeError("Executor() got servers twice: as max_workers and as servers=")
        warnings.warn(
            "farm.Executor(servers) is deprecated: the first argument is max_workers, as"
            " for ProcessPoolExecutor; pass servers=... instead",
            DeprecationWarning,
            stacklevel=3,
        )
        servers, max_workers = max_workers, None
    if max_in_flight is not None:
        if max_workers is not None:
            raise TypeError("give max_workers or its older name max_in_flight, not both")
        max_workers = max_in_flight
    return servers, max_workers


def check_function(function: str) -> str:
    """The Executor's pool name: a valid function name, and a reserved ``farm.*`` one."""
    function = check_name(function)
    if not function.startswith(RESERVED_PREFIX):
        # A farm server hands farm.* functions only to the farm's own workers; any other
        # name, any local user may register for over TCP, and read the calls it takes.
        raise ValueError(
            f"function {function!r} is not a farm.* name: name the Executor's pool"
            " farm.SOMETHING (farm.python is the default), which other users' workers"
            " cannot take"
        )
    return function


def pool_window(
    max_workers: int | None, addresses: list[str], function: str, connect_timeout: float
) -> tuple[int, int]:
    """``(max_workers, jobs in flight at most)``: as given (as many in flight), else the
    pool's own size as the first server reports it, as ProcessPoolExecutor's default is the
    cores (when none answers, those this process may use: its affinity set, within its
    cgroup's CPU quota), with a second job per worker in flight."""
    if max_workers is not None:
        return max_workers, max_workers
    asked = function_workers(addresses, function, timeout=min(connect_timeout, 1.0))
    if asked == 0:  # a server answered, and no worker serves it: calls would wait
        log.warning(
            "no worker serves %r on %s yet: its calls wait until one registers"
            " (a pool of that name in farm.toml?)",
            function,
            ", ".join(addresses),
        )
    workers = asked or cgroups.usable_cpus()
    # No cap of the executor's own: a second job per worker waits in the server's queue
    # (no more run at once than the pool has workers), so that a worker that ends a job
    # finds its next one there instead of idling through a round trip to the caller, as
    # ProcessPoolExecutor keeps a call queued beyond its workers. (Four per worker gained
    # nothing measurable once chunks went out in 1/workers shares, and would queue more of
    # this executor's work ahead of other callers'.)
    return workers, QUEUED_PER_WORKER * workers
