"""What the benchmarks read off a running farm and the pools: processes and their CPU.

``farm_up`` starts the deployment users run (``farm up`` with one pool of
farm.python workers) and waits until it is ready; the probes read the CPU time of
each process on a call's path around a workload, for CPU µs per call by role.
Shared by bench_executor, bench_joblib, bench_large and server_load.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from farm.executor.call import DEFAULT_FUNCTION, TARGET
from farm.executor.replay import shm_directory
from farm.executor.signing import KEY_ENV
from tests.helpers.farmproc import FarmUp


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """user + sys CPU seconds of each live process."""
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


class Probe(Protocol):
    def start(self) -> None: ...
    def stop(self, calls: int) -> dict[str, float]:
        """CPU µs per call for each role since start()."""
        ...


@dataclass(frozen=True)
class Processes:
    """The farm's processes at one moment, from its `farm ps` table."""

    supervisor: int
    server: int
    workers: dict[int, int]  # pid -> jobs done so far


def processes(up: FarmUp) -> Processes:
    rows = up.ps()
    (sup,) = (r["pid"] for r in rows if r["slot"] is None and r["function"] == "supervisor")
    (srv,) = (r["pid"] for r in rows if r["slot"] is None and r["function"] == "server")
    workers = {r["pid"]: r["jobs"] for r in rows if r["slot"] is not None and r["pid"]}
    return Processes(sup, srv, workers)


def key_file(up: FarmUp) -> Path:
    return up.tmp / "executor.key"


@contextmanager
def farm_up(tmp: Path, workers: int) -> Iterator[FarmUp]:
    """`farm up` with one pool of ``workers`` farm.python workers, all idle and the key
    made; stopped (and every process of it gone) on leaving."""
    pool = f'[functions."{DEFAULT_FUNCTION}"]\ntarget = "{TARGET}"\nworkers = {workers}\n'
    up = FarmUp(tmp, pool, extra_env={KEY_ENV: str(tmp / "executor.key")})
    try:
        up.expect_notify("READY=1", timeout=120)  # as systemd would see it: all workers up
        up.wait_idle({DEFAULT_FUNCTION: workers}, timeout=120)
        if not key_file(up).exists():
            raise RuntimeError(f"the supervisor made no key at {key_file(up)}")
        yield up
    finally:
        up.stop()
        # Its replay record outlives the farm, as it must for users; this farm's key goes
        # with its temporary directory, so nothing would ever sweep it (15 KB a run).
        shutil.rmtree(shm_directory(tmp / "executor.key"), ignore_errors=True)


class FarmProbe:
    """CPU of the supervisor, the server, the caller and the workers."""

    def __init__(self, up: FarmUp) -> None:
        self.up = up
        self.procs = processes(up)
        self.before: dict[int, float] = {}

    def start(self) -> None:
        self.procs = processes(self.up)  # outside the CPU window: ps costs the supervisor
        procs = self.procs
        self.before = cpu_seconds([procs.supervisor, procs.server, os.getpid(), *procs.workers])

    def stop(self, calls: int) -> dict[str, float]:
        after = cpu_seconds(list(self.before))
        jobs = processes(self.up).workers
        procs, before = self.procs, self.before
        used = {pid: after[pid] - before[pid] for pid in before if pid in after}
        workers = {pid: used[pid] for pid in procs.workers if pid in used}
        done = {pid: jobs.get(pid, n) - n for pid, n in procs.workers.items()}
        total_jobs = sum(done.values())
        busiest_us = math.nan
        if workers and total_jobs:
            busiest = max(workers, key=workers.__getitem__)
            busiest_calls = done.get(busiest, 0) * calls / total_jobs  # jobs may be chunks
            if busiest_calls:
                busiest_us = workers[busiest] / busiest_calls * 1e6
        return {
            "supervisor": used.get(procs.supervisor, math.nan) / calls * 1e6,
            "server": used.get(procs.server, math.nan) / calls * 1e6,
            "caller": used.get(os.getpid(), math.nan) / calls * 1e6,
            "workers": sum(workers.values()) / calls * 1e6,
            "busiest": busiest_us,
        }


class PoolProbe:
    """CPU of the caller and the pool's worker processes."""

    def __init__(self, workers: Sequence[int]) -> None:
        self.pids = [os.getpid(), *workers]
        self.before: dict[int, float] = {}

    def start(self) -> None:
        self.before = cpu_seconds(self.pids)

    def stop(self, calls: int) -> dict[str, float]:
        after = cpu_seconds(self.pids)
        used = {pid: after[pid] - self.before[pid] for pid in self.before if pid in after}
        me = os.getpid()
        return {
            "caller": used.get(me, math.nan) / calls * 1e6,
            "workers": sum(v for pid, v in used.items() if pid != me) / calls * 1e6,
        }
