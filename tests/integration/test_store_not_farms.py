"""Another program's SQLite database named as the store is refused and left as it was.

Found in a review: `farm server --store other.db` made the file mode 600 ("was open to
others; closing it") and left an empty -journal and -wal beside it, and only then refused
its `jobs` table as not farm's; and `farm check` said ok of it, while under `farm up` the
server refused it at every start. The tables are now read first, without a change, by the
server and by `farm check` and `farm up` alike (farm.server.storetables). So, for `farm check`
and `farm up`, is a store cut off or damaged, which they passed and the server refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from farm.server import storetables, walcopy
from farm.server.store import SQLiteStore
from tests.helpers import ROOT
from tests.helpers.farmcheck import config, farm, lines, serve_store
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, wait_connectable

REVERSE = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'

#: Other programs' databases: a `jobs` table of their own, tables of no farm's name (in
#: rollback mode, and in WAL mode with no -wal beside it: a program that closed it).
OTHERS = {
    "jobs": ("DELETE", "CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT, state TEXT)"),
    "tables": ("DELETE", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"),
    "wal": ("WAL", "CREATE TABLE sessions (token TEXT, user INTEGER)"),
}


def another_programs(path: Path, kind: str) -> dict[str, tuple[int, str]]:
    """Such a database at ``path``, mode 664 as its program left it; each file in its
    directory, by name, as (mode, digest), to compare after."""
    journal, schema = OTHERS[kind]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute(schema)
    db.execute("CREATE TABLE settings (key TEXT, value TEXT)")
    db.execute("INSERT INTO settings VALUES ('theme', 'dark')")
    db.close()
    path.chmod(0o664)
    return files(path.parent)


def _tables_in_wal_only(path: Path) -> dict[str, tuple[int, str]]:
    """Another program's database in WAL mode, its tables in its -wal alone: the program
    was killed before any checkpoint. Read as immutable (its main file alone), it had no
    table, so the server made it 600, opened it, refused it, and its close checkpointed
    the -wal into the file."""
    program = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)')\n"
        "db.execute(\"INSERT INTO users (name) VALUES ('ann')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", program, str(path)], check=True, timeout=30)
    assert Path(f"{path}-wal").stat().st_size > 0
    path.chmod(0o644)
    return files(path.parent)


def files(where: Path) -> dict[str, tuple[int, str]]:
    return {
        p.name: (stat.S_IMODE(p.stat().st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in where.iterdir()
    }


def _with_hot_journal(path: Path) -> dict[str, tuple[int, str]]:
    """Another program's database in rollback mode, as it was left by a crash in a
    transaction: its hot -journal beside it, which a read-only open cannot roll back."""
    writing = path.with_name("writing.db")
    db = sqlite3.connect(writing, isolation_level=None)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name BLOB)")
    db.execute("PRAGMA cache_size = 1")  # the transaction's pages spill: the file changes
    db.execute("BEGIN")
    db.executemany("INSERT INTO users (name) VALUES (?)", [(bytes(500),)] * 2000)
    shutil.copy(writing, path)  # the crash: the file and its journal as they are now
    shutil.copy(f"{writing}-journal", f"{path}-journal")
    db.execute("ROLLBACK")
    db.close()
    writing.unlink()
    path.chmod(0o664)
    return files(path.parent)


def _made(store: Path, kind: str) -> dict[str, tuple[int, str]]:
    if kind == "hot journal":
        return _with_hot_journal(store)
    if kind == "tables in its -wal":
        return _tables_in_wal_only(store)
    return another_programs(store, kind)


@pytest.mark.parametrize("kind", [*sorted(OTHERS), "hot journal", "tables in its -wal"])
def test_the_server_refuses_another_programs_database_and_leaves_it_as_it_was(
    tmp_path: Path, kind: str
) -> None:
    store = tmp_path / "data" / "other.db"
    store.parent.mkdir()
    before = _made(store, kind)
    out = serve_store(store)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "closing it" not in out.stderr, out.stderr
    assert f"the job store {store} has" in out.stderr and "not farm's" in out.stderr
    assert "another program's database? name another file for the store" in out.stderr
    assert files(store.parent) == before  # its mode, its bytes, and no file beside it


@pytest.mark.parametrize("kind", [*sorted(OTHERS), "tables in its -wal"])
def test_farm_check_and_farm_up_refuse_another_programs_database_exit_2(
    tmp_path: Path, kind: str
) -> None:
    store = tmp_path / "data" / "other.db"
    store.parent.mkdir()
    before = _made(store, kind)
    config(tmp_path, REVERSE, store=str(store))
    checked = farm(tmp_path, "check")
    up = farm(tmp_path, "up")
    assert (checked.returncode, up.returncode) == (2, 2), checked.stdout + up.stderr
    assert lines(checked.stderr) == lines(up.stderr) and len(lines(up.stderr)) == 1
    said = lines(up.stderr)[0]
    assert said.startswith(f"farm: farm.toml: server.store: {store} has"), said
    assert "not farm's" in said and said.endswith("name another file for the store"), said
    assert files(store.parent) == before


def passes_check_unchanged(tmp_path: Path, store: Path) -> None:
    """`farm check` of a config naming ``store`` passes, and leaves its directory as it was
    (names, bytes, modes)."""
    before = files(store.parent)
    config(tmp_path, REVERSE, store=str(store))
    checked = farm(tmp_path, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert files(store.parent) == before


def test_farm_check_passes_farms_own_store_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "data" / "queue.db"
    held = SQLiteStore(store)
    held.add(b"H:t:1", b"reverse", b"queued", b"x", 1, None, 0.0, True)
    held.commit()
    held.close()
    passes_check_unchanged(tmp_path, store)


def queued_jobs(store: Path) -> None:
    """Farm's store at ``store`` holding 50 queued jobs of 20 kB, closed as a server leaves it."""
    held = SQLiteStore(store)
    for n in range(50):
        held.add(b"H:t:%d" % n, b"reverse", b"u%d" % n, bytes(20_000), 1, None, 0.0, True)
    held.commit()
    held.close()


def _cut_off(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _cut_off_empty_wal(path: Path) -> None:
    # An empty -wal beside it, as a read-only sqlite3 look leaves one: no frame in it, no
    # server holds the store. The looks stepped aside for any -wal, `farm up` started, and
    # the server's refusal (exit 2) came out of it as exit 1, which systemd restarts.
    _cut_off(path)
    Path(f"{path}-wal").touch()


def _overwritten(path: Path) -> None:
    with path.open("r+b") as file:  # the pages after the schema's: the jobs' b-tree
        file.seek(4096)
        file.write(b"\xa5" * 8192)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_cut_off, "is cut off: its header counts"),
        (_cut_off_empty_wal, "is cut off: its header counts"),
        (_overwritten, "cannot be read (database disk image is malformed)"),
    ],
)
def test_farm_check_and_farm_up_refuse_a_damaged_store_exit_2(
    tmp_path: Path, damage: Callable[[Path], None], said: str
) -> None:
    store = tmp_path / "data" / "queue.db"
    queued_jobs(store)
    damage(store)
    before = files(store.parent)
    config(tmp_path, REVERSE, store=str(store))
    checked = farm(tmp_path, "check")
    up = farm(tmp_path, "up")
    assert (checked.returncode, up.returncode) == (2, 2), checked.stdout + up.stderr
    assert lines(checked.stderr) == lines(up.stderr) and len(lines(up.stderr)) == 1
    line = lines(up.stderr)[0]
    assert line.startswith(f"farm: farm.toml: server.store: {store} {said}"), line
    assert line.endswith(
        "restore it from a backup, or move it aside to start empty (its queued jobs are then lost)"
    ), line
    assert files(store.parent) == before


@contextlib.contextmanager
def serving(
    store: Path, jobs: int, payload: bytes, end: signal.Signals = signal.SIGKILL
) -> Iterator[None]:
    """A real farm server on ``store`` holding ``jobs`` queued background jobs of
    ``payload``; sent ``end`` as the block ends (SIGKILL: killed before any checkpoint)."""
    port = free_port()
    cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", str(store)]
    srv = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_connectable(f"127.0.0.1:{port}", srv)
        client = Peer(f"127.0.0.1:{port}")
        for n in range(jobs):
            client.send(T.SUBMIT_JOB_BG, "reverse", f"u{n}", payload)
            assert client.recv().type == T.JOB_CREATED
        client.close()
        yield
    finally:
        srv.send_signal(end)
        srv.wait(timeout=15)


def test_farm_check_passes_the_store_a_running_server_holds(tmp_path: Path) -> None:
    # Its -wal is there, emptied by checkpoints: the main file alone may lack what the -wal
    # holds, or change under the look; neither is damage.
    store = tmp_path / "data" / "queue.db"
    with serving(store, 20, bytes(20_000), end=signal.SIGTERM):
        config(tmp_path, REVERSE, store=str(store))
        checked = farm(tmp_path, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_new_stores_tables_are_in_its_file_and_farm_check_passes_it_killed(
    tmp_path: Path,
) -> None:
    # A new store's tables were in its -wal alone until its first checkpoint: a server killed
    # before it left a file that storetables.look read past 64 MiB of -wal as "may not be
    # farm's". They are checkpointed into the file as the store is made.
    store = tmp_path / "data" / "queue.db"
    with serving(store, 5, b"x"):
        pass  # killed -9, before any checkpoint
    main = sqlite3.connect(f"file:{store}?mode=ro&immutable=1", uri=True)
    tables = {row[0] for row in main.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    main.close()
    assert "jobs" in tables, tables
    passes_check_unchanged(tmp_path, store)


def test_farm_check_passes_farms_store_whose_tables_are_in_its_wal_alone(tmp_path: Path) -> None:
    # An older farm's store, its server killed before the first checkpoint: its tables in its
    # -wal alone, read from a private copy (the file, its -wal and -shm left as they were).
    store = tmp_path / "data" / "queue.db"
    store.parent.mkdir()
    made = (
        "import os, sqlite3\n"
        "from farm.server.storeopen import SCHEMA\n"
        f"db = sqlite3.connect({str(store)!r}, isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute(SCHEMA)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", made], cwd=ROOT, check=True, timeout=60)
    main = sqlite3.connect(f"file:{store}?mode=ro&immutable=1", uri=True)
    assert main.execute("SELECT name FROM sqlite_master").fetchall() == [], "not the case"
    main.close()
    passes_check_unchanged(tmp_path, store)


def test_a_database_whose_tables_are_in_a_wal_too_large_to_copy_is_refused_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "other.db"
    before = _tables_in_wal_only(store)
    monkeypatch.setattr(walcopy, "MAX_COPIED", 4096)
    why = storetables.look(str(store))
    assert why is not None and why.startswith(f"{store} may not be farm's"), why
    assert why.endswith("another program's database? name another file for the store"), why
    assert files(tmp_path) == before


def _wal_frames_left(path: Path) -> None:
    """A program killed with commits in the store's -wal alone (page 1 rewritten): the
    server's read-write open took them, and its close checkpointed them into the damaged
    file and deleted the -wal, which the refusal tells the user to move aside with it."""
    program = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute('PRAGMA user_version=0')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", program, str(path)], check=True, timeout=30)
    assert walcopy.wal_frames(str(path)), "no frames in the -wal"


@pytest.mark.parametrize("wal", [False, True], ids=["alone", "with-wal-frames"])
def test_a_damaged_store_refused_by_the_server_keeps_its_files(tmp_path: Path, wal: bool) -> None:
    # Its tables read as farm's, its jobs' pages not: made 600 before SQLite said so, given
    # a -journal (and -wal) beside it, and a -wal's frames checkpointed into it at the close.
    store = tmp_path / "data" / "queue.db"
    queued_jobs(store)
    _overwritten(store)
    store.chmod(0o644)
    if wal:
        _wal_frames_left(store)
    before = files(store.parent)
    out = serve_store(store)
    assert out.returncode == 2 and "malformed" in out.stderr, out.stderr
    assert "closing it" not in out.stderr, out.stderr
    assert stat.S_IMODE(store.stat().st_mode) == 0o644
    assert files(store.parent) == before


def test_farm_up_exits_2_where_its_server_refuses_a_store_its_look_could_not_judge(
    tmp_path: Path,
) -> None:
    # A -wal with frames beside a damaged file: `farm up`'s look steps aside (the -wal may
    # hold what the file lacks), its server reads both and refuses them, exit 2. `farm up`
    # exited 1 then, which the unit restarts every 2 s for ever (RestartPreventExitStatus=2).
    store = tmp_path / "data" / "queue.db"
    queued_jobs(store)
    _overwritten(store)
    _wal_frames_left(store)
    config(tmp_path, REVERSE, store=str(store))
    up = farm(tmp_path, "up")
    assert up.returncode == 2, up.stdout + up.stderr
    assert "malformed" in up.stderr and "the job server could not start" in up.stderr, up.stderr


def test_farms_store_left_open_to_others_is_closed_once_the_server_reads_it(
    tmp_path: Path,
) -> None:
    store = tmp_path / "data" / "queue.db"
    held = SQLiteStore(store)
    held.close()
    store.chmod(0o644)
    port = free_port()
    cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", str(store)]
    srv = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_connectable(f"127.0.0.1:{port}", srv)
        assert stat.S_IMODE(store.stat().st_mode) == 0o600
    finally:
        srv.terminate()
        _, err = srv.communicate(timeout=15)
    assert f"the job store {store} was open to others; closing it (mode 600)" in err, err


def test_a_store_whose_wal_holds_what_its_damaged_file_lacks_opens(tmp_path: Path) -> None:
    # Its main file alone reads as damaged (a checkpoint cut short, say), its -wal's frames
    # hold those pages whole: read with them, as SQLite's open reads it, it is sound, and
    # the look before the open must not refuse it.
    store = tmp_path / "data" / "queue.db"
    queued_jobs(store)
    program = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute('UPDATE jobs SET retries = retries + 1')\n"
        "db.execute('VACUUM')\n"  # every page of the file's in its -wal
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", program, str(store)], check=True, timeout=30)
    _overwritten(store)
    alone = sqlite3.connect(f"file:{store}?mode=ro&immutable=1", uri=True)
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        alone.execute("SELECT count(*) FROM jobs").fetchone()
    alone.close()
    opened = SQLiteStore(store)
    try:
        assert opened.db.execute("SELECT count(*), min(retries) FROM jobs").fetchone() == (50, 1)
    finally:
        opened.close()
