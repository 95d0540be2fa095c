"""A cgroup of the test's own with a CPU quota or a memory limit, as a container's
``--cpus``/``--memory`` set one, and a command run inside it. Needs root and a cgroup
hierarchy (v2, or v1's cpu and memory ones) this process may make a group in."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CGROUP = Path("/sys/fs/cgroup")


def _parent(controller: str) -> Path:
    """Where a group limiting ``controller`` can be made, or skip saying why not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cgroup with a limit")
    controllers = CGROUP / "cgroup.subtree_control"
    if controllers.exists():  # cgroup v2 mounted at the top
        if controller not in controllers.read_text().split():
            pytest.skip(f"the cgroup v2 root does not delegate the {controller} controller")
        return CGROUP
    v1 = CGROUP / controller
    if not (v1 / "cgroup.procs").exists():
        pytest.skip(f"no cgroup hierarchy with the {controller} controller at {CGROUP}")
    return v1


@contextmanager
def limited(controller: str, limits: dict[str, str]) -> Iterator[Path]:
    """A new group under ``controller``'s hierarchy, ``limits`` (file -> text; those of v2
    are used where it is v2, else of v1) written into it; removed after, once the commands
    run in it have ended."""
    parent = _parent(controller)
    group = parent / f"farm-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup under {parent}: {exc}")
    try:
        for name, text in limits.items():
            if (group / name).exists():
                (group / name).write_text(text)
        yield group
    finally:
        group.rmdir()


def inside(group: Path, argv: list[str]) -> list[str]:
    """``argv`` run by a shell that first moves itself into ``group``."""
    procs = shlex.quote(str(group / "cgroup.procs"))
    return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv]
