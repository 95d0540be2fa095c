"""What the host can hold: the cores and memory a farm may use, and the one rule on pool
sizes that both the config and ``farm scale`` apply."""

from __future__ import annotations

import os
from collections.abc import Mapping

from farm.config.model import FunctionConfig

__all__ = [
    "MAX_WORKERS",
    "DEFAULT_WORKER_MB",
    "available_cpus",
    "default_memory_budget_mb",
    "capacity_problem",
]

#: Most workers one pool may have (a typo must not fork-bomb the host).
MAX_WORKERS = 1024
#: What a worker is taken to need when its pool sets no max_rss_mb.
DEFAULT_WORKER_MB = 100


def available_cpus() -> tuple[int, ...]:
    """The cores this process may run on (its affinity set, not the machine's count)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def default_memory_budget_mb() -> int:
    """The machine's memory, in MB: the default bound of what all pools may hold."""
    import psutil

    return int(psutil.virtual_memory().total // 2**20)


def capacity_problem(
    pools: Mapping[str, FunctionConfig], targets: Mapping[str, int], budget_mb: int
) -> str | None:
    """Why these pool sizes cannot be run, or None. One rule for the config and `farm scale`:
    at most MAX_WORKERS a pool, and all workers' memory (``max_rss_mb``, else an estimate
    of DEFAULT_WORKER_MB each) within the budget -- a typo must not fork-bomb the host."""
    for name, count in targets.items():
        if not 0 <= count <= MAX_WORKERS:
            return f"{name} would have {count} workers (0..{MAX_WORKERS})"
    need = sum(
        count * (pools[name].max_rss_mb or DEFAULT_WORKER_MB)
        for name, count in targets.items()
        if name in pools
    )
    if need > budget_mb:
        return (
            f"the pools would need about {need} MB ({DEFAULT_WORKER_MB} MB a worker unless"
            f" max_rss_mb says), more than [supervisor] memory_budget_mb = {budget_mb}"
        )
    return None
