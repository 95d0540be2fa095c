"""The Executor's key file where another local user could have made it first.

Holding the key means running code as the farm's user. A key file in a directory every
user may write (``$FARM_KEY_FILE=/tmp/farm.key``) may be one another user made before the
farm did: mode 640 and a group the farm's user shares (``users``) passed every check of a
process not running as root, and that user, who knows the key, could then sign calls."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

NOBODY = 65534
OTHER = 54321  # another local user (no passwd entry needed to own a file)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may write, as /tmp, that ``nobody`` can reach."""
    if os.getuid() != 0:
        pytest.skip("needs root to make files of two other users (CI runs as root)")
    top = Path(tempfile.mkdtemp(prefix="farm-key-"))
    os.chmod(top, 0o755)
    (top / "tmp").mkdir()
    os.chmod(top / "tmp", 0o1777)
    yield top / "tmp"
    shutil.rmtree(top, ignore_errors=True)


def load_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from farm.executor.signing import load_key  # first: this interpreter lives under /root
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
load_key({str(path)!r}, create=False)
"""
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
    )


def plant(path: Path, owner: int) -> None:
    path.write_text("ab" * 32 + "\n")
    os.chown(path, owner, NOBODY)  # the group nobody is in, as a shared `users` group
    os.chmod(path, 0o640)


def test_a_key_file_another_user_made_in_a_shared_directory_is_refused(shared: Path) -> None:
    key = shared / "farm.key"
    plant(key, OTHER)
    loaded = load_as_nobody(key)
    assert loaded.returncode != 0, "a key another user knows was taken as the farm's"
    assert "belongs to uid 54321" in loaded.stderr


def test_the_farms_own_key_shared_with_its_group_is_read_by_other_accounts(
    shared: Path,
) -> None:
    # The shipped layout: /var/lib/farm (the farm's, 0750) holds the key, 640, for its group.
    home = shared / "farm"
    home.mkdir(mode=0o750)
    os.chown(home, OTHER, NOBODY)
    key = home / "executor.key"
    plant(key, OTHER)
    loaded = load_as_nobody(key)
    assert loaded.returncode == 0, loaded.stderr
