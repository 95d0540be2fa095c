"""Several job servers on one host with no flags: a store per server, hints that name what
exists for the command run, bind errors that name the address, [supervisor] local_server."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from farm import config
from farm.client import Client
from farm.errors import ConfigError
from farm.paths import default_store
from farm.server.legacystore import adopt_legacy_store
from farm.server.options import parse_args
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import free_port, wait_connectable
from tests.helpers.stateservers import served, server, state_env, stopped_holding_a_job

REVERSE = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""


def one_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    _, err = proc.communicate(timeout=timeout)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_default_store_is_keyed_by_the_port_else_the_unix_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert parse_args([]).store == str(tmp_path / "farm" / "queue-4730.db")
    assert parse_args(["-p", "4731"]).store == str(tmp_path / "farm" / "queue-4731.db")
    assert parse_args(["-L", "127.0.0.1:5000"]).store.endswith("queue-5000.db")
    assert parse_args(["-L", "unix:/run/farm/g.sock"]).store.endswith("queue-run-farm-g.sock.db")
    assert parse_args(["--store", "none"]).store == "none"
    path = tmp_path / "farm.toml"
    path.write_text(f'[server]\nlisten = ["127.0.0.1:4999"]\n{REVERSE}')
    assert config.load(path).server.store == str(tmp_path / "farm" / "queue-4999.db")


def test_a_server_on_4730_adopts_the_store_of_an_older_farm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    old = tmp_path / "farm" / "queue.db"
    old.parent.mkdir()
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE marker (x)")
    assert not adopt_legacy_store(default_store(4731))  # only the server on 4730 adopts it
    assert adopt_legacy_store(default_store(4730))
    assert not old.exists()
    with sqlite3.connect(default_store(4730)) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("marker",)]
    old.write_bytes(b"")
    assert not adopt_legacy_store(default_store(4730))  # never over an existing store
    assert old.exists()


def test_jobs_an_older_farm_queued_off_4730_are_not_stranded_in_silence(tmp_path: Path) -> None:
    # Found in an upgrade hunt: an older farm's server on another port (or a Unix socket
    # alone) kept its jobs in queue.db too, which only the server on 4730 adopts; upgraded,
    # its server started on an empty queue-PORT.db and nothing said where its jobs were.
    env = state_env(tmp_path)
    old = tmp_path / "state" / "farm" / "queue.db"
    old.parent.mkdir(parents=True)
    with sqlite3.connect(old) as db:  # the table as the first farm with a store made it
        db.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT"
            " NULL, data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB,"
            " run_at REAL NOT NULL DEFAULT 0)"
        )
        db.executemany(
            "INSERT INTO jobs (function, uniq, data, priority) VALUES ('f', '', x'78', 1)",
            [(), ()],
        )
    db.close()
    err = served(env, free_port())
    (line,) = [line for line in err.splitlines() if str(old) in line]
    assert "WARNING" in line and "2 queued jobs" in line
    assert f"--store {old}" in line  # the fix, in the flags farm server has
    with sqlite3.connect(old) as db:  # left where it was, for the operator to serve
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (2,)
    db.close()


def test_jobs_left_in_the_store_of_a_port_a_server_moved_from_are_named(tmp_path: Path) -> None:
    # Found in a durability hunt: a farm moved to another port (a new [server] listen, or
    # another -p) starts on the empty store of that port, and the background jobs its clients
    # were told JOB_CREATED for stayed in queue-OLDPORT.db, run by nothing, with no word.
    # A store that a running server holds is its own business, and is not named.
    env = state_env(tmp_path)
    old_port, running_port, new_port = free_port(), free_port(), free_port()
    old = server(env, "-p", str(old_port))
    running = server(env, "-p", str(running_port))
    try:
        for port, proc in ((old_port, old), (running_port, running)):
            wait_connectable(f"127.0.0.1:{port}", proc)
            with Client(f"127.0.0.1:{port}") as client:
                client.submit("f", b"x", background=True)
        old.terminate()
        assert old.wait(20) == 0
        moved = server(env, "-p", str(new_port))
        try:
            wait_connectable(f"127.0.0.1:{new_port}", moved)
        finally:
            moved.terminate()
            _, err = moved.communicate(timeout=20)
    finally:
        for proc in (old, running):
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=20)
    assert moved.returncode == 0, err
    left = tmp_path / "state" / "farm" / f"queue-{old_port}.db"
    (line,) = [line for line in err.splitlines() if str(left) in line]
    assert "WARNING" in line and "holds 1 queued job that" in line
    assert f"--store {left}" in line  # the fix, in the flags farm server has
    assert f"queue-{running_port}.db" not in err
    assert not left.with_name(left.name + "-shm").exists()  # looked at, left as it was
    assert not left.with_name(left.name + "-wal").exists()  # (the look left a 0-byte one)


def test_a_second_server_on_a_port_refuses_in_one_line_with_stores_beside(tmp_path: Path) -> None:
    # With a store holding jobs beside it, a second server on a running one's port first
    # warned (advising to give it that store, which it could not run anyway) and then
    # refused: the look came before its own store was opened. It now comes once a server
    # listens, and the look is not on the way of a server starting on the store looked at.
    env = state_env(tmp_path)
    stranded_port, port = free_port(), free_port()
    stopped_holding_a_job(env, stranded_port)
    first = server(env, "-p", str(port))
    try:
        wait_connectable(f"127.0.0.1:{port}", first)
        second = server(env, "-p", str(port))
        line = one_line(second)
        assert second.returncode == 2
        assert "is in use by another server" in line, line
        again = server(env, "-p", str(stranded_port))  # the store looked at: its own server
        wait_connectable(f"127.0.0.1:{stranded_port}", again)
        again.terminate()
        _, err = again.communicate(timeout=20)
        assert again.returncode == 0, err
    finally:
        first.terminate()
        _, err = first.communicate(timeout=20)
    (warned,) = [line for line in err.splitlines() if f"queue-{stranded_port}.db" in line]
    assert "holds 1 queued job that no running server serves" in warned


def test_farm_server_beside_farm_up_on_defaults_needs_no_flags(tmp_path: Path) -> None:
    farm = FarmUp(tmp_path, REVERSE, extra_env=state_env(tmp_path), start=False)
    # The defaults' store (FarmUp's config writes store = "none").
    farm.config.write_text(farm.config.read_text().replace('store = "none"\n', ""))
    farm.start()
    port = free_port()
    second = None
    try:
        farm.expect_notify("READY=1")
        second = server(state_env(tmp_path), "-p", str(port))
        wait_connectable(f"127.0.0.1:{port}", second)
        stores = sorted(p.name for p in (tmp_path / "state" / "farm").glob("queue-*.db"))
        shared = str(tmp_path / "state" / "farm" / stores[0])
        assert stores == sorted([f"queue-{farm.port}.db", f"queue-{port}.db"])
        # Two servers naming the same store: one clear line, with the flag farm server has.
        third = server(state_env(tmp_path), "-p", str(free_port()), "--store", shared)
        line = one_line(third, timeout=30)
        assert third.returncode == 2
        assert "is in use by another server" in line and "--store" in line
    finally:
        if second is not None:
            second.terminate()
            second.wait(10)
        farm.stop()


def test_farm_up_hints_name_its_config_keys_not_flags(tmp_path: Path) -> None:
    store = tmp_path / "shared.db"
    holder = sqlite3.connect(store)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # another server holds this store
    farm = FarmUp(tmp_path, REVERSE, start=False)
    farm.config.write_text(farm.config.read_text().replace('"none"', f'"{store}"'))
    farm.start()
    try:
        # The server's exit 2 is `farm up`'s: another farm's store is the config's to fix,
        # which the unit does not restart every 2 s (RestartPreventExitStatus=2).
        assert farm.proc.wait(40) == 2
        log = farm.read_log()
        assert "is in use by another server" in log and "[server] store" in log, log
        assert "--store" not in log, log
    finally:
        farm.stop()
        holder.close()


def test_a_failing_bind_names_the_address(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "gearman.sock"
    proc = server(state_env(tmp_path), "--store", "none", "-L", f"unix:{missing}")
    line = one_line(proc)
    assert proc.returncode == 1
    assert f"cannot listen on unix:{missing}: no such directory" in line
    port = free_port()
    first = server(state_env(tmp_path), "-p", str(port))  # its store: the port's, by default
    try:
        wait_connectable(f"127.0.0.1:{port}", first)
        busy = server(state_env(tmp_path), "--store", "none", "-p", str(port))
        line = one_line(busy)
        assert busy.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in line
        assert "-p PORT" in line
        # With no --store the port's store is met first, in use: its hint was --store PATH,
        # and the server started so then failed on the port. The port is what to change.
        same = server(state_env(tmp_path), "-p", str(port))
        line = one_line(same, timeout=30)
        assert same.returncode == 2
        assert f"is in use by another server (the store of port {port}: " in line, line
        assert "use another -p PORT" in line and "--store" not in line, line
    finally:
        first.terminate()
        first.wait(10)


def test_local_server_with_servers_registers_workers_with_both(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    body = '[server]\nlisten = ["127.0.0.1:4800"]\n[supervisor]\nservers = ["10.0.0.5:4730"]\n'
    path.write_text(body + REVERSE)
    remote_only = config.load(path)
    assert not remote_only.local_server and remote_only.worker_servers == ("10.0.0.5:4730",)
    path.write_text(body.replace("servers =", "local_server = true\nservers =") + REVERSE)
    both = config.load(path)
    assert both.local_server
    assert both.worker_servers == ("127.0.0.1:4800", "10.0.0.5:4730")
    path.write_text("[supervisor]\nlocal_server = false\n" + REVERSE)
    with pytest.raises(ConfigError, match="supervisor.local_server: false needs servers"):
        config.load(path)
    path.write_text('[supervisor]\nlocal_server = "yes"\n' + REVERSE)
    with pytest.raises(ConfigError, match="true or false"):
        config.load(path)


@pytest.mark.serial  # a server on port 4730
def test_the_store_of_an_older_farm_still_running_is_not_taken_from_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A new server on 4730 started while an older farm's server still ran renamed that
    # server's live queue.db (and WAL) to its own name, made an empty store when it could
    # not have it, and from then on never adopted the jobs the older farm went on queueing.
    old = tmp_path / "state" / "farm" / "queue.db"
    old.parent.mkdir(parents=True)
    held = sqlite3.connect(old, isolation_level=None)
    held.execute("PRAGMA locking_mode=EXCLUSIVE")  # as a running server holds its store
    held.execute("PRAGMA journal_mode=WAL")
    held.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    try:
        proc = server(state_env(tmp_path), "-p", "4730")
        line = one_line(proc, timeout=30)
        assert proc.returncode == 2
        assert line == (
            f"farm server: the job store of an older farm, {old}, is in use by another server"
            " (an older farm still running?): stop it first, and this server adopts its jobs"
        )
        assert old.exists() and not (old.parent / "queue-4730.db").exists()
    finally:
        held.close()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert adopt_legacy_store(default_store(4730)), "adopted once it is free"
