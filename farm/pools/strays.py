"""Processes that left a worker's process group and outlived it: adopted and stopped.

A command worker leads a process group of its own, and what is left of the group when
it ends is killed (farm.pools.lifecycle). A process that detaches (``setsid``, a
daemon's double fork) leaves the group, so neither the stop nor the kill reached it, and
each restart of its slot left one more running. The supervisor is a child subreaper
(``PR_SET_CHILD_SUBREAPER``): such a process, once the process that started it ended, is
its child. It is then stopped as systemd stops what is left in a unit's cgroup when its
main process ended: once the worker process it came from (``FARM_WORKER_ID`` in its
environment) has ended, it gets its pool's ``stop_signal`` (its process group, where it
leads one), then SIGKILL after the pool's grace. One whose worker still runs is left to
it; one that says no worker (its environment cleared, a Python worker's helper) was
orphaned by its own parent's end and is stopped at once. Being its parent, the supervisor
reaps it, so its pid is never another process's while it is watched.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import time
from dataclasses import dataclass

from farm.config import Config
from farm.pools.localserver import LocalServer
from farm.pools.slots import WorkerProcess

__all__ = ["Stray", "Strays", "become_subreaper", "worker_id_of"]

log = logging.getLogger("farm.supervisor")

#: prctl(2)'s option, from <linux/prctl.h>.
PR_SET_CHILD_SUBREAPER = 36
#: How often the supervisor looks for adopted processes while the farm runs; a stop looks
#: on every turn of its drain.
SWEEP_EVERY = 2.0


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children; False where Linux does not."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def worker_id_of(pid: int) -> str | None:
    """The ``FARM_WORKER_ID`` in a process's environment as it started; None if absent or
    unreadable (another user's process, where the supervisor is not root)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"FARM_WORKER_ID="):
            return entry[len(b"FARM_WORKER_ID=") :].decode(errors="replace")
    return None


def children() -> set[int]:
    """This process's children, from /proc (every thread's list: an orphan goes to one)."""
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/self/task/{tid}/children") as f:
            found.update(int(pid) for pid in f.read().split())
    return found


@dataclass
class Stray:
    """An adopted process being stopped."""

    pid: int
    name: str  # the worker it came from ("rev#2"), or "" if it does not say
    deadline: float  # SIGKILL then, if it is still there


class Strays:
    config: Config
    by_pid: dict[int, WorkerProcess]
    leftovers: list[WorkerProcess]
    server: LocalServer  # its pid is ours, not adopted
    stopping: bool
    grace: float  # the farm's; 0 once SIGQUIT said "at once"

    strays: dict[int, Stray]
    next_stray_sweep: float
    adopting: bool

    def adopt_orphans(self) -> None:
        """At start: become the subreaper of every process the farm starts."""
        self.strays, self.next_stray_sweep = {}, 0.0
        self.adopting = become_subreaper()
        if not self.adopting:
            log.info("cannot adopt orphaned processes here: a worker's detached child outlives it")

    def sweep_strays(self, now: float, *, stopping: bool = False) -> None:
        """Stop adopted processes whose worker has ended; SIGKILL those past their grace."""
        for stray in list(self.strays.values()):
            if now >= stray.deadline:
                log.warning(
                    "pid %d (detached from worker %s) outlived its grace: SIGKILL",
                    stray.pid,
                    stray.name or "?",
                )
                self.signal_stray(stray.pid, signal.SIGKILL)
                stray.deadline = float("inf")  # reaped soon; SIGKILL is not sent twice
        if not self.adopting or (now < self.next_stray_sweep and not stopping):
            return
        self.next_stray_sweep = now + SWEEP_EVERY
        ours = set(self.by_pid) | set(self.strays)
        ours.add(self.server.pid)
        adopted = children() - ours
        if not adopted:
            return
        running = {p.worker_id for p in self.by_pid.values() if p.worker_id}
        for pid in adopted:
            wid = worker_id_of(pid)
            if wid is not None and wid in running:
                continue  # detached from a worker that still runs: it goes when that ends
            self.stop_stray(pid, wid, now)

    def stop_stray(self, pid: int, wid: str | None, now: float) -> None:
        name = ""
        sig: int = signal.SIGTERM
        grace = self.config.supervisor.graceful_timeout
        if wid is not None and wid.startswith("farm:") and "#" in wid:
            name = wid[len("farm:") :].rsplit(":", 1)[0]
            pool = self.config.functions.get(name.rsplit("#", 1)[0])
            if pool is not None and pool.command is not None:
                sig = pool.stop_signal
                if pool.graceful_timeout is not None:
                    grace = pool.graceful_timeout
        if self.stopping and self.grace == 0:
            grace = 0.0  # SIGQUIT: at once
        log.warning(
            "pid %d detached from worker %s and outlived it: %s, SIGKILL in %gs",
            pid,
            name or "(it does not say which)",
            signal.Signals(sig).name,
            grace,
        )
        self.strays[pid] = Stray(pid, name, now + grace)
        self.signal_stray(pid, sig)

    def signal_stray(self, pid: int, sig: int) -> None:
        """Its whole process group where it leads one (a daemon that called setsid)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def stray_reaped(self, pid: int) -> bool:
        """A reaped pid that was an adopted process: forget it."""
        return self.strays.pop(pid, None) is not None

    def stray_deadlines(self) -> list[float]:
        times = [s.deadline for s in self.strays.values() if s.deadline != float("inf")]
        if self.adopting:
            times.append(self.next_stray_sweep)
        return times

    def strays_left(self) -> bool:
        """At a stop: whether adopted processes are still there (looked for now)."""
        self.sweep_strays(time.monotonic(), stopping=True)
        return bool(self.strays)
