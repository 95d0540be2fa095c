"""A process's children and descendants, from its own entries in /proc.

Each task's ``/proc/PID/task/TID/children`` names the children it started, so a process's
tree is walked from it down, a few small reads per process in it. psutil's
``Process.children()`` reads ``/proc/N/stat`` of every process on the host to find the
ones whose parent is asked about: the supervisor asked that of each command worker with a
pool ``timeout`` once a second (its sockets, farm.pools.commandjobs), idle or not: beside
1,100 processes of others, 5,561 files in 5 s for one worker, 3 times the supervisor's
idle CPU time.
"""

from __future__ import annotations

import contextlib
import functools
import os

import psutil

__all__ = ["children", "descendants", "listed", "processes", "tree_rss", "tree_usage"]


@functools.cache
def listed() -> bool:
    """Whether this kernel lists each task's children (CONFIG_PROC_CHILDREN: the common
    distributions' kernels do)."""
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def children(pid: int | None = None) -> set[int]:
    """The children of process ``pid`` (this one's by default), from /proc: every thread's
    list, as a child is listed under the thread that started it (and an orphan under the
    one its subreaper is given it by). Empty when it is gone."""
    where = f"/proc/{'self' if pid is None else pid}/task"
    found: set[int] = set()
    try:
        tasks = os.listdir(where)
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError), open(f"{where}/{tid}/children") as f:
            found.update(int(child) for child in f.read().split())
    return found


def descendants(pid: int) -> list[int]:
    """``pid``'s children, theirs, and so on (a wrapper's shell, the worker it started, that
    one's job's child), nearest first; empty when it is gone. Where the kernel lists no
    children (``listed``), psutil's host-wide scan is all there is."""
    if not listed():
        try:
            return [proc.pid for proc in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    seen = {pid}  # a pid ended and handed on mid-walk may not bring the walk back
    todo = [pid]
    while todo:
        for child in sorted(children(todo.pop(0))):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def processes(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and its ``descendants``, as psutil Processes, ``pid`` first; one that
    ended before it was looked at is left out. psutil.NoSuchProcess when ``pid`` is gone."""
    found = [psutil.Process(pid)]
    for child in descendants(pid):  # its own tree: not psutil's scan of every process
        try:
            found.append(psutil.Process(child))
        except psutil.NoSuchProcess:
            continue  # ended meanwhile
    return found


def tree_rss(pid: int) -> int:
    """The resident memory of process ``pid`` and its ``descendants``, summed: a command
    worker's as its slot's (a wrapper's shell holds 2 MiB, the PHP worker it started what it
    leaked); pages they share (a fork's) are counted in each, unlike a cgroup's count.
    psutil.NoSuchProcess when ``pid`` is gone."""
    total = 0
    for process in processes(pid):
        with contextlib.suppress(psutil.NoSuchProcess):  # one that ended meanwhile
            total += process.memory_info().rss
    return total


def tree_usage(pid: int) -> tuple[float, int]:
    """The CPU seconds (user + system) and resident bytes of process ``pid`` and its
    ``descendants``, from one walk: a command worker's as its slot's (a wrapper's shell waits
    on the PHP worker it started, and used none itself; each with the children it has
    waited for, so a descendant's time stays in the sum as it is reaped; memory as
    ``tree_rss``). A process that leaves the tree alive (a helper detached by a double
    fork, adopted by the supervisor once its parent exits) takes its seconds with it: the
    caller keeps the most it has read (farm.pools.metrics). psutil.NoSuchProcess when
    ``pid`` is gone."""
    cpu, rss = 0.0, 0
    for process in processes(pid):
        with contextlib.suppress(psutil.NoSuchProcess), process.oneshot():  # ended meanwhile
            t = process.cpu_times()
            cpu += t.user + t.system + t.children_user + t.children_system
            rss += process.memory_info().rss
    return cpu, rss
