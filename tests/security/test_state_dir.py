"""The state directory (the job store, the Executor's key, the spill files) where the
environment names a directory another local user controls.

`su` without `-` keeps the first user's `$XDG_STATE_HOME` (and `sudo -E` their `$HOME`):
root's `farm up` or `farm server` then kept its job store in that user's
`~/.local/state/farm`. That user, owner of the directory, put a store file of theirs
there first (a file of the owner of a directory nobody else may write passes the store's
checks: the operator may have put it there), and read every background job's payload, the
Unix socket's callers' too, out of it (SQLite, as root, gives the WAL the database's
owner). `$XDG_RUNTIME_DIR` was already passed over in that case; now the state directory
is too, as a directory others may write that is not sticky (anyone could swap it).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

OTHER = 54321  # the user who ran `su` (no passwd entry needed to own a directory)


def where(env: dict[str, str]) -> list[str]:
    """state_dir() and the default store of `farm up`, in a fresh process with ``env``."""
    code = (
        "from farm import config, paths\n"
        "print(paths.state_dir())\n"
        "print(config.load(None).server.store)\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "FARM_CONFIG")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=base | {"PYTHONPATH": str(ROOT)} | env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_a_state_home_in_a_directory_anyone_may_write_is_passed_over(tmp_path: Path) -> None:
    # Not sticky: any user could move the farm's directory aside and put theirs there.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    state, store = where(
        {"XDG_STATE_HOME": str(shared / "state"), "HOME": str(home), "XDG_RUNTIME_DIR": ""}
    )
    assert state == f"{home}/.local/state/farm"
    assert store == f"{home}/.local/state/farm/queue-4730.db"


def test_a_sticky_directory_as_tmp_is_no_reason_to_pass_over(tmp_path: Path) -> None:
    # /tmp/pytest-of-root/... is where the tests keep their state: a directory made in a
    # sticky one is the farm's own, and nobody else may move it.
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    state, _ = where({"XDG_STATE_HOME": str(sticky / "state"), "XDG_RUNTIME_DIR": ""})
    assert state == f"{sticky}/state/farm"


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


def test_roots_state_is_not_kept_in_the_state_home_of_the_user_who_ran_su(
    others_home: Path,
) -> None:
    state, store = where(
        {"XDG_STATE_HOME": str(others_home / ".local/state"), "XDG_RUNTIME_DIR": ""}
    )
    own = Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm"
    assert state == str(own)
    assert store == f"{own}/queue-4730.db"


def test_roots_state_is_not_kept_under_a_home_of_another_user(others_home: Path) -> None:
    # `sudo -E` keeps $HOME: ~/.local/state is that user's.
    state, _ = where({"HOME": str(others_home), "XDG_STATE_HOME": "", "XDG_RUNTIME_DIR": ""})
    assert state == str(Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm")
