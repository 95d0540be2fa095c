"""The Executor's replay record on a file system with no room left: a container's /dev/shm
(64 MB under Docker unless --shm-size says more) fills with the claims of a busy pool, and
every call is refused from then on. The error names the record and the way out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm.executor.replay import ReplayGuard
from tests.helpers.disks import small_tmpfs


def test_a_full_record_names_its_directory_and_the_fix(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "shm", "16k") as shm:
        guard = ReplayGuard(shm / "claims")
        expires = int(time.time()) + 600
        with pytest.raises(OSError) as info:
            for n in range(16 * 1024 // 12 + 2):  # past what 16 KiB holds, 12 bytes a claim
                guard.claim(n.to_bytes(16, "big"), expires, f"H:x:{n}")
        message = str(info.value)
        assert str(shm / "claims") in message and "is full" in message, message
        assert "--shm-size" in message, message
        # The next call meets no room either (ENOSPC, no longer a short write): said the same.
        with pytest.raises(OSError, match="is full \\(No space left on device\\)"):
            guard.claim(b"\xff" * 16, expires, "H:x:last")
