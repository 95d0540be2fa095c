"""The default store of a server on a Unix socket alone: one per socket path, and an older
farm's store (named before paths that differ only in '/' against '-' were told apart) still
found and used, so no queued job is stranded by an upgrade."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.peers import Peer, grab_all
from tests.helpers.servers import wait_connectable


def older_unix_store_name(path: str) -> str:
    """The store's name an older farm gave a Unix path: every run of other characters than
    ``[A-Za-z0-9_.-]`` one '-'."""
    return "queue-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", path).strip("-") + ".db"


def state_env(state: Path) -> dict[str, str]:
    return dict(os.environ, XDG_STATE_HOME=str(state), PYTHONPATH=str(ROOT))


def unix_server(env: dict[str, str], sock: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "farm.server", "-L", f"unix:{sock}", *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def stopped(proc: subprocess.Popen[str]) -> str:
    """What the server said on stderr, once it is stopped."""
    if proc.poll() is None:
        proc.terminate()
    _, err = proc.communicate(timeout=10)
    return err


@pytest.fixture
def plain_dir() -> Iterator[Path]:
    """A directory whose path holds no '-' (pytest's tmp_path does): a Unix path there is
    named as before, '/' as '-'."""
    path = Path(tempfile.mkdtemp(prefix="farmunix", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def queued(store: Path, unique: str) -> None:
    """``store`` as an older farm left it: one background job of ``f`` queued."""
    store.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(store) as db:
        db.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT"
            " NULL, data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB, run_at REAL"
            " NOT NULL DEFAULT 0)"
        )
        db.execute(
            "INSERT INTO jobs (function, uniq, data, priority) VALUES (x'66', ?, x'78', 1)",
            (unique.encode(),),
        )
    db.close()


def test_two_unix_paths_that_differ_in_a_slash_and_a_dash_each_keep_a_store(
    plain_dir: Path,
) -> None:
    # /X/a-b.sock and /X/a/b.sock were both queue-X-a-b.sock.db: the second was refused.
    env = state_env(plain_dir / "state")
    (plain_dir / "a").mkdir()
    one, two = plain_dir / "a-b.sock", plain_dir / "a" / "b.sock"
    first = unix_server(env, one)
    try:
        wait_connectable(f"unix:{one}", first)
        second = unix_server(env, two)
        try:
            wait_connectable(f"unix:{two}", second)
        finally:
            said = stopped(second)
        assert "in use" not in said, said
    finally:
        stopped(first)
    stores = sorted(p.name for p in (plain_dir / "state" / "farm").glob("queue-*.db"))
    assert len(stores) == 2, stores
    assert older_unix_store_name(str(two)) in stores  # a plain path's name is as it was


def test_the_store_an_older_farm_named_for_the_socket_is_adopted(tmp_path: Path) -> None:
    state, sock = tmp_path / "state", tmp_path / "farm-1000.sock"  # a '-': named anew
    home = state / "farm"
    old = home / older_unix_store_name(str(sock))
    queued(old, "queued-by-the-older-farm")
    env = state_env(state)
    proc = unix_server(env, sock)
    try:
        wait_connectable(f"unix:{sock}", proc)
        assert grab_all(f"unix:{sock}") == [(b"queued-by-the-older-farm", b"x")]
    finally:
        said = stopped(proc)
    assert "adopted the job store of an older farm" in said, said
    assert not old.exists() and [p.name for p in home.glob("queue-*.db")] != [old.name]


def test_an_older_name_a_plain_path_may_own_is_left_to_it_and_named(plain_dir: Path) -> None:
    # /X/a-b.sock's older name is also /X/a/b.sock's own, whose directory is there: which
    # server queued its jobs the file does not say, so it is not taken, and its jobs are named.
    (plain_dir / "a").mkdir()
    sock, twin = plain_dir / "a-b.sock", plain_dir / "a" / "b.sock"
    state = plain_dir / "state"
    env = state_env(state)
    old = state / "farm" / older_unix_store_name(str(sock))
    queued(old, "maybe-the-twins")
    proc = unix_server(env, sock)
    try:
        wait_connectable(f"unix:{sock}", proc)
        Peer(f"unix:{sock}").admin("status")
    finally:
        said = stopped(proc)
    assert old.exists() and "adopted" not in said
    assert f"the job store {old} holds 1 queued job" in said, said
    assert old.name == older_unix_store_name(str(twin))  # the twin's own name, as before
