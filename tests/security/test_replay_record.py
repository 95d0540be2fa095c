"""The Executor's replay record (farm.executor.replay) when another local user takes the
place of its directory in /dev/shm after it was removed under the running pool (logind's
RemoveIPC empties /dev/shm of a user's files at their logout; the name can be worked out).

Workers that went on opening their claims files by path wrote them into that user's
directory: its owner could then empty them (a captured call ran again) or put a FIFO in
the place of a minute's file (every call of that minute failed)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from farm.executor import replay
from farm.executor.replay import ReplayGuard
from farm.executor.signing import KEY_ENV, SignatureError
from farm.paths import UnsafeDirectory

NOBODY = 65534


def taken_over(directory: Path) -> None:
    """Remove ``directory`` as RemoveIPC would, and make another user's in its place."""
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory of a second local user (CI runs as root)")
    shutil.rmtree(directory)
    directory.mkdir()
    os.chmod(directory, 0o777)
    os.chown(directory, NOBODY, NOBODY)


def shared_shm(tmp_path: Path) -> Path:
    shm = tmp_path / "shm"
    shm.mkdir()
    os.chmod(shm, 0o1777)  # as /dev/shm: every user may make a directory in it
    return shm


def test_claims_never_go_to_a_directory_another_user_made_in_place_of_the_record(
    tmp_path: Path,
) -> None:
    directory = shared_shm(tmp_path) / "farm-0-claims-abc"
    guard = ReplayGuard(directory)
    expires = int(time.time()) + 600
    guard.claim(b"\1" * 16, expires, "H:x:1")
    taken_over(directory)
    later = expires + 2 * 60  # a minute whose file is not open yet
    with pytest.raises((UnsafeDirectory, SignatureError)):
        guard.claim(b"\2" * 16, later, "H:x:2")  # refused unrun: no record to keep it in
    assert list(directory.iterdir()) == [], "a claim was written into the other user's directory"


def test_a_pool_whose_shared_memory_record_was_taken_over_goes_on_beside_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "executor.key"))
    shm = shared_shm(tmp_path)
    monkeypatch.setattr(replay, "Path", lambda p: shm if p == "/dev/shm" else Path(p))
    guard = ReplayGuard()  # as a worker makes it: in shared memory
    (directory,) = shm.iterdir()
    expires = int(time.time()) + 600
    guard.claim(b"\1" * 16, expires, "H:x:1")
    taken_over(directory)
    later = expires + 2 * 60
    guard.claim(b"\2" * 16, later, "H:x:2")  # kept beside the key, as default_directory falls back
    assert list(directory.iterdir()) == []
    assert guard.directory == tmp_path / "claims"
    with pytest.raises(SignatureError, match="already ran"):
        ReplayGuard().claim(b"\2" * 16, later, "H:x:3")  # a later worker uses the same record


def test_claims_of_a_minute_kept_open_follow_the_record_when_it_is_made_again(
    tmp_path: Path,
) -> None:
    # Removed under a worker (RemoveIPC), the record is made again when a new minute's file
    # is opened; the files the worker kept open were the removed directory's, and claims
    # appended to them were seen by no other worker: the same call ran once in each.
    directory = tmp_path / "farm-0-claims-abc"
    worker = ReplayGuard(directory)
    expires = int(time.time()) + 600
    worker.claim(b"\1" * 16, expires, "H:x:1")  # this minute's file, kept open
    shutil.rmtree(directory)
    worker.claim(b"\2" * 16, expires + 2 * 60, "H:x:2")  # another minute: made again
    worker.claim(b"\3" * 16, expires, "H:x:3")  # the first minute again
    other = ReplayGuard(directory)  # another worker of the pool
    with pytest.raises(SignatureError, match="already ran"):
        other.claim(b"\3" * 16, expires, "H:x:4")  # the same call, replayed


def test_a_worker_that_kept_a_minute_open_and_one_started_after_a_removal_share_claims(
    tmp_path: Path,
) -> None:
    # The worker that had this minute's file open went on appending to it once the record
    # was removed (an unlinked file), and a worker started afterwards made a fresh directory:
    # neither saw the other's claims, and a call first seen after the removal ran in both.
    directory = tmp_path / "farm-0-claims-abc"
    before = ReplayGuard(directory)
    expires = int(time.time()) + 600
    before.claim(b"\1" * 16, expires, "H:x:1")  # this minute's file, kept open
    shutil.rmtree(directory)
    after = ReplayGuard(directory)  # recycled or scaled up once the record was gone
    before.claim(b"\2" * 16, expires, "H:x:2")  # a call first seen after the removal
    with pytest.raises(SignatureError, match="already ran"):
        after.claim(b"\2" * 16, expires, "H:x:3")  # the same call, replayed
    after.claim(b"\3" * 16, expires, "H:x:4")  # and the other way round
    with pytest.raises(SignatureError, match="already ran"):
        before.claim(b"\3" * 16, expires, "H:x:5")
