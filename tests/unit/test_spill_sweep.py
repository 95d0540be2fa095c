"""The supervisor's spill sweep and what a spill file's name says of its writer
(farm.executor.spillsweep): its pid, judged only within its own pid namespace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.executor import spill
from farm.executor.spillsweep import name_mark
from tests.helpers.spillfiles import dead_pid, settings


def made(directory: Path, name: str, whole: bool = True) -> Path:
    path = directory / name
    path.write_bytes(b"x")
    path.chmod(0o640 if whole else 0o600)
    return path


def test_a_written_file_is_named_for_its_writers_pid_and_pid_namespace(tmp_path: Path) -> None:
    path = spill.reference_path(spill.write(settings(tmp_path), b"x", "a"))
    namespace = os.stat("/proc/self/ns/pid").st_ino
    assert path.name.startswith(f"farm-spill-a-{os.getpid()}-")
    assert path.name.endswith(f".{namespace}") and name_mark() == f".{namespace}"


def test_the_arguments_of_a_caller_killed_go_at_the_next_sweep(tmp_path: Path) -> None:
    # A gunicorn worker killed with SIGKILL (the OOM killer) while its large calls were in
    # flight left their argument files the hour of orphan_age: no caller waits for them.
    s = settings(tmp_path)
    live = spill.reference_path(spill.write(s, b"x", "a"))
    pid, mark = dead_pid(), name_mark()
    orphaned = made(s.directory, f"farm-spill-a-{pid}-00{mark}")
    result = made(s.directory, f"farm-spill-r-{pid}-{'ab' * 16}-01{mark}")  # read at the end
    assert spill.sweep(s.directory, 100, 10) == 1
    assert not orphaned.exists() and live.exists() and result.exists()


@pytest.mark.parametrize("mark", [".1", ".0", ""], ids=["another", "unread", "unmarked"])
def test_a_writer_of_another_pid_namespace_is_not_judged_by_its_pid(
    tmp_path: Path, mark: str
) -> None:
    # A caller in a container of its own (a sidecar sharing the state directory): its pid is
    # no process here. Its part was removed as a dead writer's while it wrote it, and the
    # call failed reading the file; nor may its arguments go before orphan_age.
    s = settings(tmp_path)
    spill.spill_dir(s.directory)
    pid = dead_pid()  # here: in its namespace, any live process's pid
    part = made(s.directory, f"farm-spill-a-{pid}-00{mark}", whole=False)
    arguments = made(s.directory, f"farm-spill-a-{pid}-01{mark}")
    assert spill.sweep(s.directory, 100, 10) == 0
    assert part.exists() and arguments.exists()
    later = os.stat(part).st_mtime + 11  # past orphan_age: gone by age, as a dead writer's
    assert spill.sweep(s.directory, 100, 10, now=later) == 2
