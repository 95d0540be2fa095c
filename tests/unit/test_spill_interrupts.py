"""Interrupts (a Ctrl-C, raised at whichever bytecode it lands on) while the caller writes or
removes its spill files: no file is left that no one knows of, none of another's is taken."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from farm.executor import spill
from farm.executor.callerfiles import CallerFiles
from farm.executor.spillsweep import name_mark
from tests.helpers.spillfiles import dead_pid, settings


class _InterruptedHash:
    """hashlib whose sha256 is interrupted (Ctrl-C during a long argument's hash)."""

    def sha256(self, data: object = b"") -> object:
        raise KeyboardInterrupt


@pytest.mark.parametrize("through", ["spill", "caller"])
def test_an_interrupt_while_the_digest_is_computed_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    # The file's digest was computed after the file was written and closed, outside the
    # guard that removes it: an interrupt there (a 600 MB argument's hash takes a while)
    # left a file no one had recorded, which shutdown() could not remove.

    (tmp_path / "spill").mkdir(mode=0o2770)
    monkeypatch.setattr(spill, "hashlib", _InterruptedHash())
    with pytest.raises(KeyboardInterrupt):
        if through == "spill":
            spill.write(settings(tmp_path), b"x" * 4096, "a")
        else:
            CallerFiles(None, tmp_path / "spill", None).write(b"x" * 4096)
    assert os.listdir(tmp_path / "spill") == []


def test_a_written_file_is_recorded_inside_the_guard_that_removes_it(tmp_path: Path) -> None:
    # CallerFiles records the file before spill.write returns: an interrupt between the
    # return and the record would leave a file shutdown() does not know of.

    files = CallerFiles(None, tmp_path / "spill", None)
    seen: list[bytes] = []

    def interrupted(reference: bytes) -> None:
        seen.append(reference)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spill.write(settings(tmp_path), b"x" * 4096, "a", record=interrupted)
    assert len(seen) == 1 and os.listdir(tmp_path / "spill") == []
    reference = files.write(b"y" * 4096)
    files.remove_all()
    assert not spill.reference_path(reference).exists()


def test_an_interrupt_as_the_file_is_opened_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C pending as os.open() returns is raised before its result is bound: the
    # open was outside the guard that removes the file, and the file stayed for the sweep
    # (1 single Ctrl-C in 52 during a map of large arguments, by a review's count).
    (tmp_path / "spill").mkdir(mode=0o2770)
    real_open, opened = os.open, []

    def opened_then_interrupted(path: object, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)  # type: ignore[arg-type]
        if str(path).startswith(str(tmp_path)):
            opened.append(fd)
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(spill.os, "open", opened_then_interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            CallerFiles(None, tmp_path / "spill", None).write(b"x" * 4096)
    finally:
        for fd in opened:
            os.close(fd)
    assert len(opened) == 1 and os.listdir(tmp_path / "spill") == []


def test_a_name_taken_already_leaves_that_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # O_EXCL refused the name: the file there is not this write's to remove.
    spill.spill_dir(tmp_path / "spill")
    monkeypatch.setattr(spill.secrets, "token_hex", lambda n: "0" * 2 * n)
    taken = tmp_path / "spill" / f"{spill.PREFIX}a-{os.getpid()}-{'0' * 24}{name_mark()}"
    taken.write_bytes(b"another's")
    with pytest.raises(FileExistsError):
        spill.write(settings(tmp_path), b"x" * 4096, "a")
    assert taken.read_bytes() == b"another's"


def test_a_removal_interrupted_before_the_unlink_is_still_done_by_remove_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # remove() forgot the file before it unlinked it: a Ctrl-C between the two (a map's
    # cleanup, a failed enqueue) left a file that shutdown()'s remove_all() knew nothing of.
    files = CallerFiles(None, tmp_path / "spill", None)
    reference = files.write(b"x" * 4096)
    real_remove = spill.remove

    def interrupted(reference: bytes) -> None:
        monkeypatch.setattr(spill, "remove", real_remove)
        raise KeyboardInterrupt

    monkeypatch.setattr(spill, "remove", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.remove(reference)
    assert spill.reference_path(reference).exists()
    files.remove_all()
    assert os.listdir(tmp_path / "spill") == []


@pytest.mark.parametrize("kind", ["a", "r", "k"])
def test_a_part_left_by_a_writer_killed_while_it_wrote_is_swept_at_once(
    tmp_path: Path, kind: str
) -> None:
    # A worker killed while it wrote a large result (the OOM killer, its pool's timeout)
    # left the part it had written for the hour of orphan_age: 2 GB of a result, say. A
    # file is made readable to the farm's group once whole, so a part is told apart.
    s = settings(tmp_path)
    whole = spill.reference_path(spill.write(s, b"x", kind))
    pid = dead_pid()
    part = whole.with_name(f"farm-spill-{kind}-{pid}-00{name_mark()}")
    part.write_bytes(b"x")
    part.chmod(0o600)
    finished = whole.with_name(f"farm-spill-{kind}-{pid}-01{name_mark()}")  # its writer gone
    finished.write_bytes(b"x")
    finished.chmod(0o640)
    writing = whole.with_name(f"farm-spill-{kind}-{os.getpid()}-02{name_mark()}")  # a live one's
    writing.write_bytes(b"x")
    writing.chmod(0o600)
    # All young: the dead writer's part alone (and its whole arguments: test_spill_sweep.py).
    assert spill.sweep(s.directory, 100, 10) == (2 if kind == "a" else 1)
    assert not part.exists() and whole.exists() and writing.exists()
    assert finished.exists() == (kind != "a")


def test_a_file_is_readable_to_the_farms_group_only_once_its_data_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = open

    def watched(fd: int, *args: Any, **kwargs: Any) -> Any:
        seen.append(os.fstat(fd).st_mode & 0o777)  # as the data is about to be written
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(spill, "open", watched, raising=False)
    path = spill.reference_path(spill.write(settings(tmp_path), b"x" * 4096, "r"))
    assert seen == [0o600] and os.stat(path).st_mode & 0o777 == 0o640
