"""The queued jobs of the other default stores beside this server's (``queue-PORT.db``),
and of this user's stores in a state directory passed over (``queued_passed_over``).

Each server keeps its own store, keyed by its TCP port or Unix socket
(farm.paths.default_store). A farm moved to another port (a new ``[server] listen``, another
``-p``) started on the empty store of that port, and the background jobs its clients had
been told JOB_CREATED for stayed in the old store, run by nothing, with no word. So a server
on a default store names, at start, the stores beside it that hold queued jobs and that no
running server holds (a running server's exclusive lock refuses the look: it runs its own).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from farm.paths import NoStateDirectory, passed_over_state_dirs, state_dir

__all__ = ["queued_beside", "queued_passed_over"]

#: Stores looked into at most: a start must not read a directory of thousands.
MAX_LOOKED_AT = 32


def queued_beside(store: str | Path) -> list[tuple[Path, int]]:
    """The other default stores beside ``store`` (itself a default store) that hold queued
    jobs no running server serves, with their counts; empty for a store given elsewhere."""
    path = Path(store)
    try:
        home = state_dir()
    except NoStateDirectory:
        return []
    if path.parent != home or not path.name.startswith("queue-"):
        return []  # a store the operator named: the files beside it are none of ours
    return _holding(sorted(p for p in home.glob("queue-*.db") if p.name != path.name))


def queued_passed_over() -> list[tuple[Path, str, list[tuple[Path, int]]]]:
    """Each state directory ``state_dir`` passed over (farm.paths.passed_over_state_dirs),
    why, and this user's stores there holding queued jobs (an older farm's ``queue.db``
    too). Root under `sudo -E` kept its store in the first user's ~/.local/state/farm; once
    that was passed over, its server started on an empty store, and nothing said where the
    jobs were. Only this user's files are counted: another user's was never this farm's."""
    found = []
    for directory, why in passed_over_state_dirs():
        try:
            names = sorted(directory.glob("queue*.db"))
        except OSError:
            names = []
        mine = [p for p in names[:MAX_LOOKED_AT] if _own_file(p)]
        found.append((directory, why, _holding(mine)))
    return found


def _own_file(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def _holding(paths: list[Path]) -> list[tuple[Path, int]]:
    """The stores among ``paths`` (the first MAX_LOOKED_AT) that hold queued jobs."""
    found = []
    for path in paths[:MAX_LOOKED_AT]:
        count = _queued(path)
        if count:
            found.append((path, count))
    return found


def _queued(path: Path) -> int:
    """The jobs in the store at ``path``, read only; 0 when it cannot be read now (a running
    server holds it, or it is not a store). Its WAL is read too: a server killed leaves its
    latest jobs there. The shared-memory file SQLite makes for that look goes again after it,
    so the store is left as it was (its own server never uses one: locking_mode EXCLUSIVE)."""
    shm = path.with_name(path.name + "-shm")
    made = not shm.exists()
    try:
        db = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return 0
    try:
        count: int = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        db.close()
        if made:
            shm.unlink(missing_ok=True)
    return count
