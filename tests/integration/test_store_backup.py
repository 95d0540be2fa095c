"""`farm backup FILE` (the admin command ``backup PATH``): a copy of a running farm's job
store, written by its job server, which holds the store locked while it runs (so that
`sqlite3 .backup` is refused, and a copy of the file misses the jobs in its -wal)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from farm.client import Client
from farm.client.admin import admin_query
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import Server, free_port, start_farm_server, unix_farm_server
from tests.helpers.unprivileged import homeless
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

NOBODY = 65534
FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""


def queued(addr: str, function: str) -> int:
    """How many jobs of ``function`` the server at ``addr`` holds (admin status)."""
    for line in admin_query(addr, "status").splitlines():
        name, _, rest = line.partition("\t")
        if name == function:
            return int(rest.split("\t")[0])
    return 0


def test_a_backup_of_a_running_farm_is_a_store_a_server_replays(tmp_path: Path) -> None:
    store = tmp_path / "queue.db"
    up = FarmUp(tmp_path, FUNCTIONS, store=store)
    try:
        up.expect_notify("READY=1")
        client = Client(up.addr)
        try:  # no worker serves "later": they wait in the store (and its -wal)
            for n in range(3):
                client.submit("later", f"job {n}".encode(), background=True)
            assert client.call("reverse", "abc", timeout=10) == b"cba"
        finally:
            client.close()
        copy = tmp_path / "backups" / "copy.db"
        copy.parent.mkdir()
        outside = subprocess.run(
            ["sqlite3", str(store), f".backup {tmp_path / 'refused.db'}"],
            capture_output=True,
            text=True,
            timeout=30,
        )  # the premise: the store cannot be copied from outside while it runs
        assert outside.returncode != 0, outside
        made = farm_cli("backup", str(copy), "-c", str(up.config))
        assert made.returncode == 0, made.stderr
        assert f"{copy}: 3 jobs" in made.stdout
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert not Path(f"{copy}-wal").exists()  # one file, whole
        again = farm_cli("backup", str(copy), "-c", str(up.config))
        assert again.returncode == 1 and "File exists" in again.stderr, again.stderr
    finally:
        assert up.stop() == 0
    # The copy is a store: a server started on it has the three jobs queued.
    srv = start_farm_server("--store", str(copy))
    try:
        wait_for("the copy's jobs replayed", lambda: queued(srv.addr, "later") == 3)
    finally:
        srv.stop()
    rows = sqlite3.connect(copy).execute("SELECT data FROM jobs ORDER BY id").fetchall()
    assert [bytes(r[0]) for r in rows] == [b"job 0", b"job 1", b"job 2"]


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[Server]:
    """A farm server with a store, on TCP and a Unix socket."""
    with unix_farm_server("--store", str(tmp_path / "queue.db")) as srv:
        yield srv


def test_a_backup_is_refused_where_it_could_not_be_the_stores(
    stored: Server, tmp_path: Path
) -> None:
    local = f"unix:{stored.unix}"
    target = tmp_path / "copy.db"
    over_tcp = admin_query(stored.addr, f"backup {target}")
    assert over_tcp.startswith("ERR PERMISSION_DENIED") and not target.exists()
    assert admin_query(local, "backup copy.db").startswith("ERR INVALID_ARGUMENTS")
    assert admin_query(local, "backup").startswith("ERR INVALID_ARGUMENTS")
    target.write_bytes(b"mine")  # never written over
    assert admin_query(local, f"backup {target}").startswith("ERR BACKUP_FAILED")
    assert target.read_bytes() == b"mine"
    missing = tmp_path / "no-such-dir" / "copy.db"
    assert admin_query(local, f"backup {missing}").startswith("ERR BACKUP_FAILED")
    spaced = tmp_path / "a copy.db"  # a path of several words is one path
    assert admin_query(local, f"backup {spaced}").startswith("OK 0 ")
    assert spaced.exists()


def test_a_memory_only_server_has_no_store_to_copy(tmp_path: Path) -> None:
    with unix_farm_server() as srv:  # --store none
        reply = admin_query(f"unix:{srv.unix}", f"backup {tmp_path / 'copy.db'}")
        assert reply.startswith("ERR NO_STORE"), reply
        assert not (tmp_path / "copy.db").exists()


@contextmanager
def anothers_server() -> Iterator[tuple[Path, int]]:
    """A farm server run as another uid, its store and Unix socket in a directory of its
    own (in /tmp: pytest's temp tree is closed to other users); that directory, its uid."""
    home = Path(tempfile.mkdtemp(prefix="farm-backup-"))
    try:
        sock = home / "gearman.sock"
        argv = ["--port", str(free_port()), "--store", str(home / "queue.db"), "--unix", str(sock)]
        run_as = homeless([sys.executable, "-m", "farm.server", *argv])
        uid = int(next(a for a in run_as if a.startswith("--reuid=")).partition("=")[2])
        os.chown(home, uid, uid)
        home.chmod(0o755)
        proc = subprocess.Popen(run_as, cwd=ROOT)
        try:
            wait_for("the other uid's server", lambda: sock.exists() or proc.poll() is not None)
            assert proc.poll() is None, "the other uid's server did not start"
            yield home, uid
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_only_the_servers_own_user_or_root_may_have_it_write_a_copy() -> None:
    # The copy is written as the server's user: any other user of the socket's group could
    # have it made where that user may write (a -wal planted beside a store is the store's).
    with anothers_server() as (home, uid):
        local, target = f"unix:{home / 'gearman.sock'}", home / "copy.db"
        probe = f"""
import os, socket
os.setgid({NOBODY + 1}); os.setuid({NOBODY + 1})
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({local[5:]!r})
s.sendall(b"backup {target}\\n")
print(s.recv(4096).decode())
"""
        os.chmod(local[5:], 0o666)  # reachable by that third user: refused by its uid
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert run.stdout.startswith("ERR PERMISSION_DENIED"), run.stdout + run.stderr
        assert not target.exists()
        assert admin_query(local, f"backup {target}").startswith("OK 0 ")  # root's
        assert target.stat().st_uid == uid  # the server's file, not root's


def test_a_path_an_admin_line_cannot_carry_is_a_usage_error(tmp_path: Path) -> None:
    # Bytes that are not UTF-8 (a name made in a Latin-1 locale) read as "server
    # unreachable"; a newline would end the admin line early.
    for name in (b"caf\xe9.db", b"two  spaces.db", b"a\nb.db"):
        run = subprocess.run(
            [sys.executable, "-m", "farm", "backup", os.fsencode(tmp_path) + b"/" + name],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and "cannot carry that path" in run.stderr, run.stderr


def test_farm_backup_says_what_to_do_about_a_refusal(
    stored: Server, gearmand: Server, tmp_path: Path
) -> None:
    local = f"unix:{stored.unix}"
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"mine")
    run = farm_cli("backup", str(taken), "--server", local)
    fix = "a backup never writes over a file; remove it or name a new one"
    assert run.returncode == 1 and run.stderr.rstrip().endswith(fix), run.stderr
    # A directory (an empty FILE too: the working directory) is a usage mistake, exit 2.
    for where in (str(tmp_path), ""):
        run = farm_cli("backup", where, "--server", local)
        named = where or os.getcwd()
        fix = (
            f"is a directory; name a new file in it ({named}/queue.db) (usage: farm backup --help)"
        )
        assert run.returncode == 2 and run.stderr.rstrip().endswith(fix), run.stderr
    run = farm_cli("backup", str(tmp_path / "copy.db"), "--server", gearmand.addr)
    assert run.returncode == 1 and "has no backup command" in run.stderr, run.stderr
    # A relative FILE in a working directory removed: one line, not abspath's traceback.
    gone = tmp_path / "gone"
    gone.mkdir()
    script = f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -m farm backup x.db'
    run = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert run.returncode == 2 and "the working directory was removed" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
