"""One way to start a child of the supervisor: fork, settle the child, then exec.

``posix_spawn`` gives the child no hook before it runs, so the death signal was
set by the child's own code, tens of milliseconds later: a supervisor killed in
that window left orphans. Here the forked child, before ``exec``, joins its own
process group, asks Linux for a death signal and checks that its parent is
still the supervisor (the parent may have died before the request), and pins
itself to its core -- so none of the worker's own code ever runs unpinned or
unwatched. The supervisor has no threads, so forking it is safe, and it is
small, so forking it is cheap.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Mapping, Sequence

__all__ = ["spawn", "set_death_signal"]

PR_SET_PDEATHSIG = 1

_prctl: Callable[..., int] | None
try:  # looked up once, in the parent: the forked child must not load libraries
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def set_death_signal(sig: int) -> None:
    """Linux sends ``sig`` to this process when its parent dies (cleared by setuid)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, sig)


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    death_signal: int = signal.SIGKILL,
    core: int | None = None,
) -> int:
    """Start ``argv`` (``argv[0]`` an absolute path) as a watched child; its pid.

    The child inherits exactly the descriptors marked inheritable. Raises OSError
    when the fork fails; an exec that fails ends the child with exit code 127.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: nothing here may raise into the supervisor's code
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor, which decides
        set_death_signal(death_signal)
        if os.getppid() != parent:  # it died before the request took hold
            os._exit(1)
        if core is not None:
            try:
                os.sched_setaffinity(0, {core})
            except OSError:
                pass  # a core taken away since the config was read: run unpinned, not never
        signal.set_wakeup_fd(-1)  # a signal before exec must not wake the supervisor's loop
        os.execve(argv[0], list(argv), dict(env))
    except BaseException:
        pass
    os._exit(127)
