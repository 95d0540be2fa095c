"""State directories passed over (tests/security/test_state_dir.py) named at start: the
server names this user's stores in one (never opening them), only where it holds any, and
`farm up` a `$STATE_DIRECTORY` passed over, whatever its store."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import ROOT, otheruser
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import free_port
from tests.helpers.stateservers import served

# The fixture, taken by assignment: pytest finds it as if defined here, and no import
# stands unused beside the parameters that name it.
others_home = otheruser.others_home
OTHER = otheruser.OTHER


def queue(path: Path, jobs: int) -> Path:
    """A store holding ``jobs`` queued jobs (the table as the first farm with a store made it)."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT"
            " NULL, data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB,"
            " run_at REAL NOT NULL DEFAULT 0)"
        )
        db.executemany(
            "INSERT INTO jobs (function, uniq, data, priority) VALUES ('f', '', x'78', 1)",
            [()] * jobs,
        )
    return path


def server_start_says(env: dict[str, str], port: int) -> str:
    """What ``farm server -p port`` says on stderr from its start to a SIGTERM, with ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "FARM_CONFIG")}
    return served(base | env | {"PYTHONPATH": str(ROOT)}, port)


def test_a_state_directory_passed_over_is_named_at_the_servers_start(
    tmp_path: Path, others_home: Path
) -> None:
    # Root under `su` (no -) had its store in the first user's ~/.local/state/farm; once
    # that was passed over, its server started on an empty store and said nothing of the
    # jobs in the old one. Another user's store there is none of this farm's: not named.
    # Nothing there is opened (its owner could swap a FIFO in, whose open hangs the
    # start): the stores are named with their sizes.
    theirs = others_home / ".local/state/farm"
    port = free_port()
    roots = queue(theirs / f"queue-{port}.db", 2)
    alices = queue(theirs / "queue-1.db", 3)
    os.chown(alices, OTHER, OTHER)
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    env = {"XDG_STATE_HOME": str(others_home / ".local/state"), "HOME": str(home)}
    err = server_start_says(env, port)
    (line,) = [line for line in err.splitlines() if str(theirs) in line]
    assert "WARNING" in line and f"depends on {others_home}, a directory of uid {OTHER}" in line
    size = roots.stat().st_size
    assert f"so it is passed over for {home}/.local/state/farm; there are this user's" in line
    assert f"stores {roots.name!r} ({size} bytes), which may hold queued jobs" in line, line
    assert "queue-1.db" not in line, line
    assert not roots.with_name(roots.name + "-shm").exists()  # not opened: SQLite makes it
    assert (home / f".local/state/farm/queue-{port}.db").exists()


def test_names_in_a_state_directory_passed_over_are_quoted_and_counted(
    tmp_path: Path, others_home: Path
) -> None:
    # A name with a newline in that user's directory forged a line of the server's log, and
    # past the first 32 names nothing said that the rest were not looked at.
    theirs = others_home / ".local/state/farm"
    forged = theirs / "queue-\nWARNING forged.db"
    forged.write_bytes(b"x")
    for n in range(40):
        (theirs / f"queue-a{n:02}.db").write_bytes(b"")
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    env = {"XDG_STATE_HOME": str(others_home / ".local/state"), "HOME": str(home)}
    err = server_start_says(env, free_port())
    assert not [line for line in err.splitlines() if line.startswith("WARNING forged")], err
    (line,) = [line for line in err.splitlines() if "so it is passed over for" in line]
    assert "'queue-\\nWARNING forged.db' (1 bytes)" in line, line
    assert f"10 more names in {theirs}, passed over, were not looked at" in err, err


def test_a_state_directory_passed_over_with_no_store_of_ours_is_not_named(
    tmp_path: Path, others_home: Path
) -> None:
    # `sudo -E` users were told of the first user's state directory at every start, though
    # it did not exist, or held nothing of this farm's.
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    for state in (others_home / ".local/state", others_home / "none"):
        env = {"XDG_STATE_HOME": str(state), "HOME": str(home)}
        err = server_start_says(env, free_port())
        assert str(others_home) not in err, err


def test_a_passed_over_state_directory_variable_is_named_whatever_the_store(
    tmp_path: Path,
) -> None:
    # systemd/farm.toml names its store: a $STATE_DIRECTORY passed over then said nothing,
    # and the Executor's key moved to another directory without a word.
    if os.getuid() != 0:
        pytest.skip("needs root: a group's write counts under root (CI runs as root)")
    tmp_path.chmod(0o755)
    team = tmp_path / "team"
    team.mkdir()
    team.chmod(0o2770)
    os.chown(team, 0, 4242)
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    env = {"STATE_DIRECTORY": str(team), "HOME": str(home), "XDG_STATE_HOME": ""}
    up = FarmUp(tmp_path, "", extra_env=env, metrics=False)
    try:
        up.expect_notify("READY=1")
        log = up.read_log()
    finally:
        up.stop()
    (line,) = [line for line in log.splitlines() if f"$STATE_DIRECTORY {team}" in line]
    assert "WARNING" in line and "may be written by others (owner uid 0, mode 2770)" in line
    assert "so it is passed over: the Executor's key" in line, line
