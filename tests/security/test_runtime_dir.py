"""The /tmp/farm-$UID fallback for sockets cannot be squatted by another local user.

Without $XDG_RUNTIME_DIR, farm puts its control and job-server sockets in
/tmp/farm-$UID. Another user who creates that directory first would receive
them: `farm ps` would talk to the attacker and `farm stop` report success while
the real supervisor runs on. farm creates it 0700 and refuses one that is not
its own or is writable by others, as OpenSSH and tmux do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.paths import UnsafeDirectory, fallback_runtime_dir, private_dir
from tests.helpers import ROOT

NOBODY = 65534


def farm_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no config file and no XDG_RUNTIME_DIR: the /tmp fallback is used."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(TMPDIR=str(tmp), PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp / "state"))
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def squatted(tmp_path: Path) -> Path:
    if os.getuid() != 0:
        pytest.skip("needs root to create a directory owned by another user (CI runs as root)")
    path = tmp_path / f"farm-{os.getuid()}"
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    os.chown(path, NOBODY, NOBODY)
    return path


def test_farm_ps_refuses_a_runtime_dir_of_another_user(tmp_path: Path, squatted: Path) -> None:
    result = farm_cli(tmp_path, "ps")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"belongs to uid {NOBODY}" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_farm_up_refuses_a_runtime_dir_of_another_user(tmp_path: Path, squatted: Path) -> None:
    result = farm_cli(tmp_path, "up")
    assert result.returncode == 1, result.stderr
    assert f"belongs to uid {NOBODY}" in result.stderr and "Traceback" not in result.stderr
    assert list(squatted.iterdir()) == [], "nothing of ours was put in it"


def test_a_world_writable_runtime_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(UnsafeDirectory, match="writable by others"):
        private_dir(path)


def test_a_link_in_place_of_the_runtime_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeDirectory, match="not a directory"):
        private_dir(link)


def test_the_fallback_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    path = private_dir(fallback_runtime_dir())
    assert path.parent == tmp_path
    assert path.stat().st_mode & 0o777 == 0o700 and path.stat().st_uid == os.getuid()
