"""Files the server writes, as other local users would find them: the job store (the
jobs' payloads) closed to them, and no link, nor a file of theirs, planted at a pid or log
path written to."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from farm.logs import setup_logging
from farm.server.reserve import DiskReserve
from farm.server.store import SQLiteStore, StoreError
from farm.server.storeopen import SCHEMA
from tests.helpers import ROOT
from tests.helpers.servers import free_port

NOBODY = 65534
OTHER = 54321  # the farm's user, not root (no passwd entry needed)


def shared_dir(tmp_path: Path) -> Path:
    """A directory everyone may write, sticky (as /tmp). Needs root, to make files of a
    second local user, as CI runs."""
    if os.getuid() != 0:
        pytest.skip("needs root to make a file of a second local user (CI runs as root)")
    shared = tmp_path / "tmp"
    shared.mkdir(exist_ok=True)
    os.chmod(shared, 0o1777)
    return shared


def planted(tmp_path: Path, name: str, text: str = "") -> Path:
    """A file open to all that another user (nobody) made first in a directory everyone
    may write (a sticky one, as /tmp)."""
    path = shared_dir(tmp_path) / name
    path.write_text(text)
    os.chmod(path, 0o666)
    os.chown(path, NOBODY, NOBODY)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_and_its_directory_are_closed_to_other_users(tmp_path: Path) -> None:
    path = tmp_path / "state" / "farm" / "queue.db"
    store = SQLiteStore(path)
    store.add(b"H:x:1", b"f", b"", b"secret payload", 1, None, 0.0, True)
    store.commit()
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    wal = Path(str(path) + "-wal")
    assert wal.exists() and mode(wal) & 0o077 == 0, oct(mode(wal))


def test_a_store_left_readable_by_others_is_closed_to_them(tmp_path: Path) -> None:
    # Its group too: the farm's group is for callers, who must not read each other's jobs.
    path = tmp_path / "queue.db"
    SQLiteStore(path).db.close()
    os.chmod(path, 0o644)
    SQLiteStore(path)
    assert mode(path) == 0o600


def test_a_link_at_the_store_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not a store")
    (tmp_path / "queue.db").symlink_to(target)
    with pytest.raises(StoreError):
        SQLiteStore(tmp_path / "queue.db")
    assert target.read_text() == "not a store"


def test_a_store_or_wal_another_user_made_first_is_refused(tmp_path: Path) -> None:
    # A store path in /tmp: another user made the file (or its WAL) first, open to all. The
    # server (as root) closed it to mode 600 and wrote the jobs into it, but it stayed that
    # user's: a chmod back and they read every payload.
    for name in ("a.db", "b.db-wal"):
        theirs = planted(tmp_path, name)
        with pytest.raises(StoreError, match=f"belongs to uid {NOBODY}"):
            SQLiteStore(theirs.with_name(name.removesuffix("-wal")))
        assert theirs.read_bytes() == b""


def test_a_hot_journal_another_user_left_beside_the_store_is_refused(tmp_path: Path) -> None:
    # SQLite rolls a -journal it finds beside a database back into it (a transaction cut
    # short by a crash), whoever made it: another user's, left beside a store in /tmp, put
    # their jobs in place of the farm's, and the server ran them.
    path = shared_dir(tmp_path) / "queue.db"
    store = SQLiteStore(path)
    store.add(b"H:x:1", b"f", b"mine", b"x", 1, None, 0.0, True)
    store.close()
    theirs = sqlite3.connect(tmp_path / "theirs.db", isolation_level=None)
    theirs.execute(SCHEMA)
    theirs.execute(
        "INSERT INTO jobs (function, uniq, data, priority) VALUES (x'66', x'74', x'', 1)"
    )
    theirs.execute("PRAGMA synchronous = OFF")  # a journal whose length says its pages
    theirs.execute("PRAGMA cache_size = 1")  # spilled: the pages are in it now
    theirs.execute("BEGIN")
    theirs.execute("DELETE FROM jobs")
    theirs.execute("CREATE TABLE pad (x)")
    theirs.execute("INSERT INTO pad VALUES (zeroblob(100000))")
    hot = Path(str(tmp_path / "theirs.db") + "-journal").read_bytes()
    theirs.close()
    journal = planted(tmp_path, "queue.db-journal")
    journal.write_bytes(hot)
    with pytest.raises(StoreError, match=f"belongs to uid {NOBODY}"):
        SQLiteStore(path)
    assert journal.read_bytes() == hot


def test_no_side_file_another_user_makes_while_the_store_opens_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The side files were checked, then SQLite opened them (without O_EXCL) a moment later:
    # a WAL another user made in between (inotify on /tmp tells them when), and kept open,
    # gave them every payload (SQLite, as root, makes it its own and mode 600: too late).
    path = shared_dir(tmp_path) / "queue.db"
    connect = sqlite3.connect
    theirs: list[int] = []

    def connect_once_they_made_theirs(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        for side in ("-wal", "-journal"):
            try:  # as they can: a sticky directory keeps them from replacing one of ours
                fd = os.open(str(path) + side, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            os.fchown(fd, NOBODY, NOBODY)
            theirs.append(fd)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect_once_they_made_theirs)
    store = SQLiteStore(path)
    store.add(b"H:x:1", b"f", b"", b"secret payload", 1, None, 0.0, True)
    store.commit()
    try:
        assert theirs == [], "another user made a side file before the server did"
        for fd in theirs:
            assert b"secret payload" not in os.pread(fd, 1 << 20, 0)
    finally:
        for fd in theirs:
            os.close(fd)
        store.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["queue.db", "queue.db-reserve"]


def test_a_server_not_run_as_root_names_the_wal_another_user_made(tmp_path: Path) -> None:
    # The server makes the WAL before SQLite opens it; were the open of one another user
    # made (mode 600) tried first, a server that is not root would say only EACCES.
    shared_dir(tmp_path)
    top = Path(tempfile.mkdtemp(prefix="farm-store-"))  # pytest's own is root's alone
    try:
        os.chmod(top, 0o1777)
        wal = top / "queue.db-wal"
        wal.touch(mode=0o600)
        os.chown(wal, NOBODY, NOBODY)
        script = (
            "import os, sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from farm.server.store import SQLiteStore, StoreError\n"  # before leaving root
            f"os.setgroups([]); os.setgid({OTHER}); os.setuid({OTHER})\n"
            "try:\n"
            f"    SQLiteStore({str(top / 'queue.db')!r})\n"
            "except StoreError as exc:\n"
            "    print(exc)\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
        )
        assert f"queue.db-wal belongs to uid {NOBODY}" in run.stdout, run.stdout + run.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_the_server_refuses_a_link_at_its_pid_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "farm.pid"
    link.symlink_to(victim)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "farm.server",
            "--port",
            str(free_port()),
            "--store",
            "none",
            "-P",
            str(link),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "pid file" in run.stderr
    assert victim.read_text() == "keep me\n"


def test_a_log_file_is_not_opened_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "farm.log"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        setup_logging(role="test", text_format="%(message)s", filename=str(link))
    assert victim.read_text() == "keep me\n"


def _server_with(*flags: str) -> subprocess.CompletedProcess[str]:
    """`farm server` with ``flags``, expected to refuse them before it serves: its port is
    held here, so a server that took them writes to the files and exits (no wait)."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = str(held.getsockname()[1])
        return subprocess.run(
            [sys.executable, "-m", "farm.server", "--port", port, "--store", "none", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_a_pid_or_log_file_another_user_made_first_is_refused(tmp_path: Path) -> None:
    # In a directory everyone may write (/tmp), another user made the files first, open to
    # all: the server (as root) wrote its pid and its log into them, so that user read the
    # log, and rewrote the pid for root's logrotate (`kill -HUP $(cat pidfile)`) to signal.
    for name, flag in (("farm.pid", "-P"), ("farm.log", "--log-file")):
        theirs = planted(tmp_path, name, "theirs\n")
        run = _server_with(flag, str(theirs))
        assert run.returncode == 2, run.stderr
        assert f"belongs to uid {NOBODY}" in run.stderr, run.stderr
        assert theirs.read_text() == "theirs\n"


def test_a_hard_link_at_the_pid_or_log_path_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    for name, flag in (("farm.pid", "-P"), ("farm.log", "--log-file")):
        link = tmp_path / name
        os.link(victim, link)
        run = _server_with(flag, str(link))
        assert run.returncode == 2, run.stderr
        assert "other links" in run.stderr, run.stderr
        assert victim.read_text() == "keep me\n"


def test_a_hard_link_at_the_stores_reserve_path_is_not_grown_nor_emptied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # STORE-reserve was opened as any file of this user's: a hard link planted there (in
    # /tmp, where fs.protected_hardlinks=0 lets any user link root's files) had the server
    # grow the file it names to 8 MB of zeros, and empty it when the disk filled.
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.link(victim, tmp_path / "queue.db-reserve")
    reserve = DiskReserve(str(tmp_path / "queue.db"))
    try:
        with caplog.at_level("WARNING", logger="farm.server"):
            reserve.make()
        reserve.release()
    finally:
        reserve.close()
    assert victim.read_text() == "keep me\n"
    # One sentence that says what and why: it read "[Errno 1] .../queue.db-reserve has
    # other links (2); no disk reserve".
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "Errno" not in warning, warning
    assert "another hard link" in warning and "not used" in warning, warning
    assert "no disk reserve" in warning, warning


def _refused_with_a_job_of_another_uid(path: Path) -> str:
    """A store holding one job at ``path``, of another uid: the server's one line of
    refusal (exit 2), the file left as it was."""
    store = SQLiteStore(path)
    store.add(b"H:t:1", b"f", b"", b"x", 1, None, 0.0, True)
    store.commit()
    store.close()
    os.chown(path, OTHER, OTHER)
    before = path.read_bytes()
    argv = [sys.executable, "-m", "farm.server", "-L", f"127.0.0.1:{free_port()}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    said = subprocess.run(
        [*argv, "--store", str(path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert said.returncode == 2, said.stderr
    assert path.read_bytes() == before
    (line,) = said.stderr.strip().splitlines()
    return line


def test_a_store_with_jobs_of_another_uid_is_told_its_chown_not_only_its_removal(
    tmp_path: Path,
) -> None:
    # Found restoring a backup: a store copied with `rsync -a` from a host where the farm's
    # user has another uid keeps that uid, and the server refused it with "remove it, or
    # choose a path" and `--store PATH, or --store none`: each fix left its jobs behind.
    path = shared_dir(tmp_path).parent / "queue.db"
    line = _refused_with_a_job_of_another_uid(path)
    assert f"belongs to uid {OTHER}" in line and "chown it to this user" in line, line
    assert "--store none" not in line  # another path strands the jobs
    assert path.stat().st_uid == OTHER


def test_a_store_with_jobs_another_user_planted_in_a_shared_directory_gets_no_chown_hint(
    tmp_path: Path,
) -> None:
    # Found in a review: the chown hint was given for a store another local user made with
    # rows in it in a directory everyone may write (a sticky /tmp): advice they could steer
    # the operator into, to take their file (and its jobs) in as the farm's.
    path = shared_dir(tmp_path) / "queue.db"
    line = _refused_with_a_job_of_another_uid(path)
    assert f"belongs to uid {OTHER}" in line and "chown" not in line, line
    assert path.stat().st_uid == OTHER
