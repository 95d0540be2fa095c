"""Children of the supervisor end with it, so no orphan keeps a port or a store locked; and
what /proc says of a process's life (``process_stat``: a pid and its start name one
process for as long as the host runs)."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

__all__ = ["PR_SET_PDEATHSIG", "die_with_parent", "prctl", "process_stat", "stat_fields"]

PR_SET_PDEATHSIG = 1

prctl: Callable[..., int] | None
try:  # looked up once, at import: a forked child (farm.pools.spawn) must load no library
    prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    prctl = None


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Ask Linux to SIGTERM this process when its parent dies (graceful: stores close).

    Returns False when the parent (``parent_pid``, if given) is already gone, which
    the kernel's setting cannot catch: the caller should then exit.
    """
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return parent_pid is None or os.getppid() == parent_pid


def stat_fields(pid: int | str) -> list[bytes]:
    """/proc/PID/stat's fields after the name (stat(5)'s 3rd on); [] if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()  # after the name, which may hold ")"
    except (OSError, IndexError):
        return []


def process_stat(pid: int | str) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks after boot); None if gone."""
    fields = stat_fields(pid)
    try:
        return fields[0].decode(), int(fields[19])  # stat(5): fields 3 and 22
    except (IndexError, ValueError):
        return None
