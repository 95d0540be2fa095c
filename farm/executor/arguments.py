"""What ``farm.Executor()`` accepts: its arguments checked as ProcessPoolExecutor checks
them (same errors), the old servers-first form told apart, and the spill settings resolved
from its keywords, the environment and the config."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TypeGuard

from farm.discovery import executor_spill
from farm.executor import spill

__all__ = [
    "check_max_tasks_per_child",
    "check_max_workers",
    "is_servers",
    "old_forms",
    "spill_settings",
]


def spill_settings(
    key_file: str | None, spill_dir: str | os.PathLike[str] | None, max_spill_mb: int | None
) -> spill.SpillSettings:
    """The executor's spill directory and limit: its keywords, else $FARM_SPILL_DIR and
    $FARM_MAX_SPILL_MB, else ``[executor]`` of the config, else the defaults."""
    configured_dir, configured_mb = executor_spill()
    where = spill_dir or os.environ.get(spill.SPILL_ENV) or configured_dir
    mb = max_spill_mb or os.environ.get(spill.MAX_SPILL_ENV) or configured_mb
    return spill.SpillSettings(
        Path(where) if where else spill.default_spill_dir(key_file),
        spill.mb_to_bytes(mb or spill.DEFAULT_MAX_SPILL_MB),
    )


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
    max_workers' place (DeprecationWarning), and ``max_in_flight`` for ``max_workers``."""
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
