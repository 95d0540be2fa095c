"""A server's default store (queue-PORT.db in the state directory) left holding jobs by an
operator who gave the server another store, or none, is named at its start; its own default
store, however spelled, is not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from farm.server.otherstores import MAX_WAL_READ
from tests.helpers import ROOT
from tests.helpers.servers import free_port
from tests.helpers.stateservers import served, state_env, stopped_holding_a_job


def test_jobs_left_in_the_default_store_of_a_server_given_another_store_are_named(
    tmp_path: Path,
) -> None:
    # Found moving a job store to another disk: a server on a port, given a store elsewhere
    # (`[server] store`, `--store`), started on that empty file, and the jobs queued in its
    # default store, queue-PORT.db in the state directory, waited there with no word: the
    # look for stores holding jobs was for servers on a default store alone.
    env, port = state_env(tmp_path), free_port()
    stopped_holding_a_job(env, port)
    moved_to = tmp_path / "other-disk" / "queue.db"
    moved_to.parent.mkdir()
    err = served(env, port, "--store", str(moved_to))
    left = tmp_path / "state" / "farm" / f"queue-{port}.db"
    (line,) = [line for line in err.splitlines() if f"store {left} " in line]
    assert "WARNING" in line and "holds 1 queued job that no running server serves" in line
    assert f"--store {left}" in line and f"runs {moved_to}" in line  # the fix, and why


def _large_wal(store: Path) -> None:
    """What a server killed while writing leaves: a -wal past otherstores.MAX_WAL_READ, so
    the look names its store as one that may hold jobs, without opening it. Two commits
    (a table made, then dropped) leave the store's tables as they were."""
    code = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute('CREATE TABLE pad (x BLOB)')\n"
        f"db.execute('INSERT INTO pad VALUES (zeroblob({2 * MAX_WAL_READ}))')\n"
        "db.execute('DROP TABLE pad')\n"
        "os._exit(0)\n"  # no close: no checkpoint, the -wal stays as it is
    )
    subprocess.run([sys.executable, "-c", code, str(store)], check=True, timeout=60)
    assert store.with_name(store.name + "-wal").stat().st_size > MAX_WAL_READ


@pytest.mark.parametrize("spelled", ["through a directory's link", "relative"])
def test_a_server_on_its_default_store_spelled_another_way_is_not_told_it_strands_jobs(
    tmp_path: Path, spelled: str
) -> None:
    # Found in a review: a server given its own default store through a link to the state
    # directory (or a relative path), after a crash left a -wal too large to read at start,
    # warned that its own store "may hold queued jobs that no running server serves" and
    # advised --store with the path it ran: the paths were compared, not the files.
    env, port = state_env(tmp_path), free_port()
    stopped_holding_a_job(env, port)
    own = tmp_path / "state" / "farm" / f"queue-{port}.db"
    _large_wal(own)
    if spelled == "relative":
        named = os.path.relpath(own, ROOT)  # the server runs in ROOT
    else:
        (tmp_path / "link").symlink_to(own.parent)
        named = str(tmp_path / "link" / own.name)
    err = served(env, port, "--store", named)
    assert "replayed 1 background job" in err, err  # it runs them: nothing is stranded
    assert "no running server serves" not in err, err


def test_jobs_left_in_the_default_store_of_a_server_on_memory_alone_are_named(
    tmp_path: Path,
) -> None:
    # Found in a review: a server run with `--store none` looked for no store, so the jobs
    # queued in its default store (queue-PORT.db) waited there with no word.
    env, port = state_env(tmp_path), free_port()
    stopped_holding_a_job(env, port)
    err = served(env, port, "--store", "none")
    left = tmp_path / "state" / "farm" / f"queue-{port}.db"
    (line,) = [line for line in err.splitlines() if f"store {left} " in line]
    assert "WARNING" in line and "holds 1 queued job that no running server serves" in line
    assert "in memory only" in line and f"(--store {left})" in line, line
