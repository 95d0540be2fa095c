"""``backup PATH``, farm's admin command: a copy of the job store, made by the server that
holds it (docs/operations.md, "Backing up the job store").

The server holds its store locked for its life (``locking_mode=EXCLUSIVE``, so that no
second server replays the same jobs), so ``sqlite3 ... .backup`` and ``VACUUM INTO`` from
outside are refused while it runs, and a copy of the file misses the jobs still in its
``-wal``. The server copies it itself, through its own connection and SQLite's backup API:
the jobs it acknowledged (a background job's JOB_CREATED leaves after its commit), in one
self-contained file (rollback journal, no ``-wal``) that a server opens as its store.

Taken on the Unix socket only, from the server's own user or root (farm.server.admin): the
file is written as the server's user, and another user of the socket's group could have it
made where that user may write (a ``-wal`` planted beside a store is read as the store's).
The copy runs in the store's writer thread (farm.server.storewriter), in turn with its
commits: the loop serves on meanwhile (a copy takes 0.2-0.4 s per 100 MB of store here),
and the commits begun after it wait for it, so background submits get their JOB_CREATED
late. The connection that asked gets nothing else before the reply
(farm.server.adminside: it is not read meanwhile).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sqlite3
import stat
import tempfile
from concurrent.futures import Future
from time import monotonic
from typing import TYPE_CHECKING

from farm.lifetime import process_stat
from farm.server.admintext import incomplete

if TYPE_CHECKING:
    from farm.server.hub import Hub
    from farm.server.store import SQLiteStore

__all__ = ["backup", "copy_store"]

log = logging.getLogger("farm.server")


def _error(code: str, text: str) -> str:
    return f"ERR {code} {text.replace(' ', '+')}\r\n"  # gearmand's '+' for each space


def backup(server: Hub, args: list[str]) -> str | Future[str]:
    """``backup PATH``: ``OK JOBS BYTES`` once PATH (absolute, not there yet) holds a copy
    of the store, checked; an ERR line saying why not (nothing left at PATH then). Words
    are joined by one space: a path is one argument that may hold spaces. The reply is a
    future where the copy is made in the writer thread (under a running loop)."""
    if not args:
        return incomplete("backup")
    path = " ".join(args)
    if not os.path.isabs(path):
        return _error("INVALID_ARGUMENTS", f"{path}: give an absolute path (the server's)")
    store, writer = server.store, server.writer
    if store is None or writer is None:
        return _error("NO_STORE", "this server keeps its jobs in memory only (--store none)")
    if server.loop is None:  # connections driven by hand (tests): no writer thread runs
        return _copied(store, path)
    return writer.run(lambda: _copied(store, path))


def _copied(store: SQLiteStore, path: str) -> str:
    """The reply to ``backup PATH``, once the copy is made (the writer thread's)."""
    started = monotonic()
    try:
        jobs, size = copy_store(store.db, path)
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning("backup of the job store %s to %s failed: %s", store.path, path, why)
        return _error("BACKUP_FAILED", why)  # the asker knows the path: '+' in it reads back
    log.info(
        "job store %s copied to %s: %d jobs, %d bytes in %.3f s",
        store.path,
        path,
        jobs,
        size,
        monotonic() - started,
    )
    return f"OK {jobs} {size}\r\n"


def copy_store(db: sqlite3.Connection, path: str) -> tuple[int, int]:
    """Write a copy of the store open as ``db`` at ``path``, a new name (mode 0600); the
    copy's jobs and bytes. Made and checked in a directory of its own beside ``path``
    (``.farm-backup-*``, mode 0700), then linked in, so that PATH is the whole, checked copy
    or nothing: a copy killed midway left at PATH opened as an empty store (its journal
    rolled back the pages written), and a name checked first and opened again later could
    be made a symlink to another file meanwhile, which the copy then wrote over."""
    if os.path.lexists(path):  # before the copy's work; the link below decides, though
        raise FileExistsError(errno.EEXIST, "File exists")
    where = os.path.dirname(path)
    sweep(where)
    mark = f"{SCRATCH}{socket.gethostname()}.{os.getpid()}.{_started(os.getpid())}-"
    scratch = tempfile.mkdtemp(prefix=mark, dir=where)
    made = os.path.join(scratch, "copy.db")
    try:
        copy = sqlite3.connect(made, isolation_level=None)
        try:
            db.backup(copy)
            # The copy's header says WAL, as the store's does: one file, not one and a -wal
            # that a `cp` of it would leave behind. The server makes it WAL again at its open.
            copy.execute("PRAGMA journal_mode=DELETE")
            checked = copy.execute("PRAGMA quick_check").fetchone()[0]
            if checked != "ok":
                raise sqlite3.DatabaseError(f"the copy does not check: {checked}")
            jobs = int(copy.execute("SELECT count(*) FROM jobs").fetchone()[0])
        finally:
            copy.close()
        os.chmod(made, 0o600)
        os.link(made, path)  # EEXIST for any name there, a symlink too: never written over
        return jobs, os.path.getsize(made)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: The start of a backup's scratch directory's name; then whose it is: HOST.PID.START-.
SCRATCH = ".farm-backup-"


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks after boot; "" where there is none): with
    its pid, it names one process for as long as the host runs."""
    stat = process_stat(pid)
    return "" if stat is None else str(stat[1])


def sweep(directory: str) -> None:
    """Remove from ``directory`` the scratch directories of backups whose server ended
    midway (killed: a stop waits for the copy): this host's and this user's, whose process
    is gone. They hold a copy cut short, as large as the store."""
    host = socket.gethostname()
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(SCRATCH)]
    except OSError:
        return  # the copy's own work says why
    for entry in entries:
        owner, pid, started = (
            entry.name[len(SCRATCH) :].rpartition("-")[0].rsplit(".", 2) + ["", ""]
        )[:3]
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        mine = stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
        if not mine or owner != host or not pid.isdecimal() or _started(int(pid)) == started:
            continue  # another's, or its server runs: a copy under way
        shutil.rmtree(entry.path, ignore_errors=True)
        log.warning(
            "removed %s, left by a backup whose server ended midway (pid %s)", entry.path, pid
        )
