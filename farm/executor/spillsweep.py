"""What a spill file's name says of its writer, and the supervisor's sweep that reads it.

A spill file is named ``farm-spill-KIND-PID-[TAG-]RANDOM.NS`` (farm.executor.spill.write):
its writer's pid and that pid's namespace (the inode of ``/proc/self/ns/pid``; 0 where it
cannot be read). A pid says whether the writer lives only to a process of the same
namespace: a caller in a container of its own (a Kubernetes sidecar sharing the state
directory, without ``shareProcessNamespace``) has pids the supervisor sees as no process,
and the sweep took such a caller's file as its dead writer's: a part of a large argument
was removed while the caller wrote it, and the call failed reading it. A writer of
another namespace, or of a name without the mark (an older farm's), is not known alive
or gone: its files go by their age alone.
"""

from __future__ import annotations

import functools
import os
import stat
import time
from pathlib import Path

__all__ = ["PREFIX", "name_mark", "sweep", "sweep_every", "unlinked"]

PREFIX = "farm-spill-"


@functools.cache
def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def name_mark() -> str:
    """What a spill file's name ends with: its writer's pid namespace (see the module)."""
    return f".{_pid_namespace()}"


def sweep_every(orphan_age: float) -> float:
    """How often the supervisor sweeps (seconds): every minute, or oftener for short ages."""
    return max(0.5, min(60.0, orphan_age / 2))


def sweep(directory: Path, max_age: float, orphan_age: float, now: float | None = None) -> int:
    """Remove spill files left by dead or lost processes; the number removed.

    Any file older than ``max_age``; a result file older than ``orphan_age`` (its caller
    reads it the moment the job ends). A kept file (``k``: an executor's initializer, a
    function its calls share) only once its writer is gone and it is older than
    ``orphan_age``, whatever its age: an executor may live for weeks. At any age, where its
    writer is known gone: a part, a file its writer never made readable to the farm's
    group (``write`` does so once the data is in: a worker or caller killed while it
    wrote, by the OOM killer, a pool's timeout, SIGKILL; such a part of a 2 GB result
    stayed the hour of ``orphan_age``), and an argument file (its caller killed: no one
    waits for the call's result, and a gunicorn worker killed with large calls in flight
    left their arguments the hour). A writer not known (``_writer``) counts as gone, but
    for those two: its files go by their age.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith(PREFIX):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        parts = name[len(PREFIX) :].split("-")
        whole = bool(info.st_mode & stat.S_IRGRP)  # a part, if not: see the docstring
        if _kept(parts[0], _writer(parts), whole, now - info.st_mtime, max_age, orphan_age):
            continue
        removed += unlinked(entry.path)
    return removed


def unlinked(path: str) -> bool:
    """Remove the spill file at ``path``; whether it was (False: gone already, or refused)."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _kept(
    kind: str, writer: bool | None, whole: bool, age: float, max_age: float, orphan_age: float
) -> bool:
    if writer is False and (not whole or kind == "a"):
        return False  # a part its writer left, or arguments no caller waits on now
    if age <= orphan_age and age <= max_age:
        return True
    if kind == "a" and writer and age <= max_age:
        return True  # a live caller's, within the call's lifetime
    return kind == "k" and (bool(writer) or age <= orphan_age)


def _writer(parts: list[str]) -> bool | None:
    """Whether the writer a name's parts name lives (None: not known, see the module)."""
    _, marked, namespace = parts[-1].partition(".")
    if len(parts) < 3 or not marked or not namespace.isdigit():
        return None
    mine = _pid_namespace()
    if not mine or int(namespace) != mine:
        return None
    return _alive(parts[1])


def _alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True
