"""Children of the supervisor end with it, so no orphan keeps a port or a store locked."""

from __future__ import annotations

import os
import signal

__all__ = ["die_with_parent"]

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Ask Linux to SIGTERM this process when its parent dies (graceful: stores close).

    Returns False when the parent (``parent_pid``, if given) is already gone, which
    the kernel's setting cannot catch: the caller should then exit.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    return parent_pid is None or os.getppid() == parent_pid
