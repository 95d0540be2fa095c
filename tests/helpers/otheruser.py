"""The user who ran `su` (or `sudo -E`), for the tests of the state directory: their uid, and
their home with a store planted where root's would go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

OTHER = 54321  # the user who ran `su` (no passwd entry needed to own a directory)


@pytest.fixture
def others_home(tmp_path: Path) -> Path:
    """The home of the user who ran `su`, with a store planted where root's would go."""
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory of another user (CI runs as root)")
    home = tmp_path / "alice"
    planted = home / ".local/state/farm"
    planted.mkdir(parents=True)
    (planted / "queue-4730.db").write_bytes(b"")
    for path in (home, home / ".local", home / ".local/state", planted, planted / "queue-4730.db"):
        os.chown(path, OTHER, OTHER)
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    return home
