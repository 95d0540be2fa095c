"""The queued jobs of the other default stores beside this server's (``queue-PORT.db``).

Each server keeps its own store, keyed by its TCP port or Unix socket
(farm.paths.default_store). A farm moved to another port (a new ``[server] listen``, another
``-p``) started on the empty store of that port, and the background jobs its clients had
been told JOB_CREATED for stayed in the old store, run by nothing, with no word. So a server
on a default store names, at start, the stores beside it that hold queued jobs and that no
running server holds (a running server's exclusive lock refuses the look: it runs its own).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from farm.paths import NoStateDirectory, state_dir

__all__ = ["queued_beside"]

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
    found = []
    others = sorted(p for p in home.glob("queue-*.db") if p.name != path.name)
    for other in others[:MAX_LOOKED_AT]:
        count = _queued(other)
        if count:
            found.append((other, count))
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
