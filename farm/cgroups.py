"""What this process's cgroup lets it use: its CPU quota and its memory limit.

A container's limits are not the machine's: ``docker run --cpus 2 --memory 1g`` (or a
Kubernetes pod's ``limits``, systemd's ``CPUQuota=`` and ``MemoryMax=``) leaves
``os.sched_getaffinity`` every core and psutil every byte of the host, and a farm sized by
those started a worker per host core, each throttled to a sliver of the quota, and more
of them than the memory limit holds (the OOM killer's to sort out). The limits are read
as loky reads them for joblib, but from this process's own cgroup and each one above it
(the smallest wins), found through ``/proc/self/cgroup`` and ``/proc/self/mountinfo``, so
that a limit on a systemd unit's cgroup counts as well as a container's (whose cgroup
namespace shows it at the mount's top). cgroup v2 (``cpu.max``, ``memory.max``) and v1
(``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``memory.limit_in_bytes``) alike; anything
unreadable is no limit: these only ever lower what the machine's counts say.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cpu_limit", "memory_limit", "usable_cpus"]

#: cgroup v1 writes "no limit" as a page-rounded 2**63 - 1; anything this large is none.
_NO_LIMIT = 1 << 62


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _mounts(controller: str, proc: Path) -> Iterator[tuple[Path, str]]:
    """(the directory of this process's cgroup, the mount's top) in each hierarchy that
    has ``controller``: the unified one (v2), or a v1 one mounted with it."""
    groups: dict[str, str] = {}  # "" for v2, else a v1 hierarchy's controllers
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        _, names, group = line.split(":", 2) if line.count(":") >= 2 else ("", "?", "")
        groups[names] = group
    for line in (_read(proc / "self" / "mountinfo") or "").splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        root, point, fstype = fields[3], fields[4], fields[dash + 1]
        point = point.replace("\\040", " ")
        if fstype == "cgroup2":
            path = groups.get("")
        elif fstype == "cgroup" and controller in fields[dash + 3].split(","):
            path = next((p for n, p in groups.items() if controller in n.split(",")), None)
        else:
            continue
        if path is None:
            continue
        # The mount shows the hierarchy from its root: a container's own cgroup, bind-
        # mounted as the top (v1 without a cgroup namespace), is this process's path's
        # start. A path outside the mount's view (a namespace's "/..") is taken as the top.
        inner = os.path.relpath(path, root) if path.startswith(root.rstrip("/") + "/") else "."
        top = Path(point)
        yield (top / inner if inner != "." else top), point


def _upwards(start: Path, top: str) -> Iterator[Path]:
    """``start`` and each directory above it, up to the mount's top."""
    here = start
    while True:
        yield here
        if str(here) == top or here.parent == here:
            return
        here = here.parent


def cpu_limit(proc: Path = Path("/proc")) -> float | None:
    """The CPUs' worth of time this process's cgroups allow (2.5 for ``--cpus 2.5``), or
    None where no quota is set or none can be read."""
    limits = []
    for start, top in _mounts("cpu", proc):
        for directory in _upwards(start, top):
            v2 = _read(directory / "cpu.max")
            if v2 is not None:
                quota, _, period = v2.partition(" ")
                if quota.isdigit() and period.isdigit() and int(period):
                    limits.append(int(quota) / int(period))
                continue
            v1_quota = _read(directory / "cpu.cfs_quota_us") or ""
            v1_period = _read(directory / "cpu.cfs_period_us") or ""
            if v1_quota.isdigit() and v1_period.isdigit() and int(v1_period):  # -1 is none
                limits.append(int(v1_quota) / int(v1_period))
    return min(limits) if limits else None


def memory_limit(proc: Path = Path("/proc")) -> int | None:
    """The bytes this process's cgroups may hold (``--memory``, ``MemoryMax=``), or None."""
    limits = []
    for start, top in _mounts("memory", proc):
        for directory in _upwards(start, top):
            text = _read(directory / "memory.max") or _read(directory / "memory.limit_in_bytes")
            if text and text.isdigit() and int(text) < _NO_LIMIT:
                limits.append(int(text))
    return min(limits) if limits else None


def usable_cpus() -> int:
    """How many CPUs' work this process can get done at once: its affinity set's cores,
    fewer where its cgroup's quota is lower (rounded up: 0.5 is one, 2.5 three), as
    loky's ``cpu_count()`` says for joblib; at least 1."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_limit()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(cores, 1)
