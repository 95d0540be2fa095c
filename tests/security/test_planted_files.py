"""The Executor's key file and spill directory where another local user could have made
them first.

Holding the key means running code as the farm's user. A key file in a directory every
user may write (``$FARM_KEY_FILE=/tmp/farm.key``) may be one another user made before the
farm did: mode 640 and a group the farm's user shares (``users``) passed every check of a
process not running as root, and that user, who knows the key, could then sign calls. A
spill directory made so (2770, that group) passed too, and its owner could read every
large argument and result."""

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


def load_as_nobody(path: Path, what: str = "key") -> subprocess.CompletedProcess[str]:
    call = {"key": "load_key(path, create=False)", "spill": "spill_dir(path)"}[what]
    script = f"""
import os, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
# First: this interpreter lives under /root, which nobody may enter.
from farm.executor.signing import load_key
from farm.executor.spill import spill_dir
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
path = Path({str(path)!r})
{call}
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


def test_a_fifo_another_user_made_at_the_key_path_is_refused_not_waited_on(shared: Path) -> None:
    # Opened as a file, a FIFO there held `farm up`, its workers and every caller for good.
    key = shared / "farm.key"
    os.mkfifo(key)
    os.chown(key, OTHER, NOBODY)
    script = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + (
        f"from farm.executor.signing import load_key; load_key({str(key)!r})"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd="/"
    )
    assert loaded.returncode != 0 and "is not a regular file" in loaded.stderr, loaded.stderr


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


def test_a_spill_directory_another_user_made_in_a_shared_directory_is_refused(
    shared: Path,
) -> None:
    spill = shared / "spill"
    spill.mkdir()
    os.chown(spill, OTHER, NOBODY)
    os.chmod(spill, 0o2770)
    loaded = load_as_nobody(spill, "spill")
    assert loaded.returncode != 0, "another user's spill directory was taken as the farm's"
    assert "belongs to uid 54321" in loaded.stderr


def test_the_farms_own_spill_directory_is_used_by_other_accounts_of_its_group(
    shared: Path,
) -> None:
    home = shared / "farm"  # /var/lib/farm under the shipped unit
    home.mkdir(mode=0o750)
    os.chown(home, OTHER, NOBODY)
    spill = home / "spill"
    spill.mkdir()
    os.chown(spill, OTHER, NOBODY)
    os.chmod(spill, 0o2770)
    loaded = load_as_nobody(spill, "spill")
    assert loaded.returncode == 0, loaded.stderr
