"""What the host can hold: the cores and memory a farm may use, and the one rule on pool
sizes that both the config and ``farm scale`` apply."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

from farm import cgroups
from farm.config.model import FunctionConfig

__all__ = [
    "MAX_WORKERS",
    "DEFAULT_WORKER_MB",
    "available_cpus",
    "auto_workers",
    "cpu_list",
    "CPUS_FORMS",
    "default_memory_budget_mb",
    "capacity_problem",
    "count_problem",
    "scale_problem",
    "quota_note",
]

#: Most workers one pool may have (a typo must not fork-bomb the host).
MAX_WORKERS = 1024
#: What a worker is taken to need when its pool sets no max_rss_mb.
DEFAULT_WORKER_MB = 100
#: Linux's largest CPU count (NR_CPUS at most 8192): a core list past it is a typo, refused
#: before a range like "0-99999999" is spelled out.
MAX_CPUS = 8192
#: What ``cpus`` may be, for the error that finds something else.
CPUS_FORMS = (
    'must be "all", a list of core numbers like [0, 1] or ranges as taskset -c takes them,'
    ' like "0-3,8-11" or, every other core, "0-15:2"'
)
# A core, or a range with an optional stride: what util-linux's cpulist_parse takes.
_CPU_SPAN = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?(?::\s*(\d+)\s*)?", re.ASCII)


def available_cpus() -> tuple[int, ...]:
    """The cores this process may run on (its affinity set, not the machine's count)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def auto_workers(cpus: tuple[int, ...]) -> int:
    """What ``workers = "auto"`` is: one per core of ``cpus``, but no more than the
    cgroup's CPU quota, rounded up (``docker run --cpus 2`` on a 64-core host: 2, not 64
    workers each throttled to a thirty-second of a core; the cores stay pinned to)."""
    quota = cgroups.cpu_limit()
    return max(1, len(cpus) if quota is None else min(len(cpus), math.ceil(quota)))


def cpu_list(text: str) -> list[int]:
    """The cores of a list as ``taskset -c`` and cpusets write it: ``"2-15"``,
    ``"0-3,8-11"``, ``"0,2,4"``, ``"0-15:2"`` (a range's every 2nd core: 0, 2 ... 14), in
    its order. ValueError says which part is wrong and how."""
    cores: list[int] = []
    seen: set[int] = set()
    for part in text.split(","):
        span = _CPU_SPAN.fullmatch(part)
        if span is None:
            # The value given, quoted too: '' alone did not say which comma was extra.
            of = "" if part.strip() == text.strip() else f" in {text!r}"
            raise ValueError(f"{CPUS_FORMS} ({part.strip()!r}{of} is neither)")
        low = int(span[1])
        high = low if span[2] is None else int(span[2])
        stride = 1 if span[3] is None else int(span[3])
        if span[3] is not None and span[2] is None:
            raise ValueError(
                f'"{part.strip()}" has a stride but no range; write "{low}-LAST:{stride}"'
            )
        if stride == 0:
            raise ValueError(
                f'"{part.strip()}" has stride 0; a stride is 1 or more, e.g. "{low}-{high}:2"'
                " for every other core"
            )
        if high < low:
            raise ValueError(f'range "{low}-{high}" runs backwards; write "{high}-{low}"')
        if high >= MAX_CPUS:
            raise ValueError(f"core {high} is past any machine's (Linux counts {MAX_CPUS} at most)")
        for core in range(low, high + 1, stride):
            # Here, not after: a list of distinct cores ends at MAX_CPUS, but repeated
            # ranges ("0-8191,0-8191,...") would be spelled out, then counted quadratically.
            if core in seen:
                raise ValueError(f"core {core} is listed twice; list each once")
            seen.add(core)
            cores.append(core)
    return cores


def default_memory_budget_mb() -> int:
    """The machine's memory, or the cgroup's memory limit where lower (a container's
    ``--memory``, ``MemoryMax=``), in MB: the default bound of what all pools may hold."""
    import psutil

    total = psutil.virtual_memory().total
    limit = cgroups.memory_limit()
    return int(min(total, limit if limit is not None else total) // 2**20)


def _budget_source(budget_mb: int) -> str:
    """Where a budget of ``budget_mb`` comes from, when it is the cgroup's memory limit
    (``"auto"`` in a container): a 512 the config never wrote, named as what it is."""
    limit = cgroups.memory_limit()
    if limit is not None and limit // 2**20 == budget_mb:
        return " (this cgroup's memory limit: a container's --memory, a unit's MemoryMax=)"
    return ""


def quota_note(cpus: tuple[int, ...]) -> str:
    """Why ``workers = "auto"`` is fewer than ``cpus``' cores, or "": the cgroup's quota."""
    quota = cgroups.cpu_limit()
    if quota is None or math.ceil(quota) >= len(cpus):
        return ""
    return (
        f'workers = "auto" is {auto_workers(cpus)} a pool: this cgroup\'s CPU quota is'
        f" {quota:g} CPU of {len(cpus)} cores (a container's --cpus, a unit's CPUQuota=)"
    )


def count_problem(name: str, count: int) -> str | None:
    """Why pool ``name`` cannot have ``count`` workers, or None: the per-pool half of
    ``capacity_problem``, which the config names under the pool's own ``workers`` key."""
    if not 0 <= count <= MAX_WORKERS:
        return f"{name} would have {count} workers (0..{MAX_WORKERS})"
    return None


def capacity_problem(
    pools: Mapping[str, FunctionConfig], targets: Mapping[str, int], budget_mb: int
) -> str | None:
    """Why these pool sizes cannot be run, or None. One rule for the config and `farm scale`:
    at most MAX_WORKERS a pool, and all workers' memory (``max_rss_mb``, else an estimate
    of DEFAULT_WORKER_MB each) within the budget -- a typo must not fork-bomb the host."""
    for name, count in targets.items():
        problem = count_problem(name, count)
        if problem:
            return problem
    need = sum(
        count * (pools[name].max_rss_mb or DEFAULT_WORKER_MB)
        for name, count in targets.items()
        if name in pools
    )
    if need > budget_mb:
        return (
            f"the pools would need about {need} MB ({DEFAULT_WORKER_MB} MB a worker unless"
            f" max_rss_mb says), more than [supervisor] memory_budget_mb = {budget_mb}"
            f"{_budget_source(budget_mb)}"
        )
    return None


def scale_problem(
    pools: Mapping[str, FunctionConfig],
    targets: Mapping[str, int],
    now: Mapping[str, int],
    budget_mb: int,
) -> str | None:
    """``capacity_problem`` for `farm scale` (``now``: the pools' sizes before it), with what
    to give instead: the config's says which key to lower, and the command's said nothing."""
    for name, count in targets.items():
        if problem := count_problem(name, count):
            return f"{problem}: give it 0 to {MAX_WORKERS} (it has {now.get(name, 0)} now)"
    problem = capacity_problem(pools, targets, budget_mb)
    if problem:
        return (
            f"{problem}: scale by less, or give the pools a lower max_rss_mb (farm reload) or"
            " the farm a larger memory_budget_mb (a restart)"
        )
    return None
