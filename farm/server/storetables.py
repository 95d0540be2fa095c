"""Whether a SQLite file is a store this farm reads, looked at without changing it: its
tables (farm's ``jobs``, ``damaged_jobs``, a gearmand queue it takes over, SQLite's own)
and its format.

Asked twice: by the server before it makes the file its own (mode 600, a journal and WAL
beside it, WAL mode), since another program's database named as the store by mistake was
changed so and only then refused; and by `farm check` and `farm up` before anything starts
(farm.config.servertune), which said ok of it, while the server then refused it at every
start. Split from farm/server/storeopen.py, which asks ``not_farms`` again once it holds
the store's lock.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse

from farm.server.storecheck import ASIDE_TABLE

__all__ = ["GEARMAND_COLUMNS", "STORE_FORMAT", "look", "not_farms"]

#: The store's format, kept as its user_version. Raised (and written there) only by a change
#: an older farm would misread: a column it must not ignore, a payload kept otherwise. A
#: column with a default, which older farms leave out of their statements, keeps it.
STORE_FORMAT = 0

#: The columns of the first farm's store: a `jobs` table without them is not farm's.
_FIRST_COLUMNS = {"id", "function", "uniq", "data", "priority", "reducer", "run_at"}

#: The columns of gearmand's libsqlite3 queue (when_to_run, from gearmand 1.1, is optional):
#: a table of them, whatever its name (--libsqlite3-table), is taken over, not another's.
GEARMAND_COLUMNS = {"unique_key", "function_name", "priority", "data"}

#: A file with tables of another program's: its fix, the same for the server and the config.
_ANOTHER = "another program's database? name another file for the store"

#: The first bytes of every SQLite 3 database file; byte 18, its write version: 2 in WAL mode.
_HEADER = b"SQLite format 3\x00"
_WAL_VERSION = 2


def not_farms(db: sqlite3.Connection, path: str) -> str | None:
    """Why the database open in ``db`` (the file at ``path``) is not a store this farm
    reads, in the words of its fix where it has one of its own, or None: a table of
    another program's, or a newer farm's format."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    columns = {t: {r[1] for r in db.execute(f"PRAGMA table_info({_quoted(t)})")} for t in tables}
    missing = sorted(_FIRST_COLUMNS - columns["jobs"]) if "jobs" in columns else []
    if missing:  # first: another program's file may have a user_version of its own
        return (
            f"{path} has a table jobs that is not farm's (no column {', '.join(missing)}):"
            f" {_ANOTHER}"
        )
    others = [
        t
        for t in tables
        if t not in ("jobs", ASIDE_TABLE)
        and not t.startswith("sqlite_")  # SQLite's own: sqlite_sequence, sqlite_stat1
        and not columns[t] >= GEARMAND_COLUMNS
    ]
    if others:
        named = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"{path} has tables that are not farm's ({named}): {_ANOTHER}"
    (found,) = db.execute("PRAGMA user_version").fetchone()
    if found > STORE_FORMAT:
        return (
            f"{path} is of format {found}: a newer farm's, or not farm's store; this farm"
            f" reads up to format {STORE_FORMAT}: upgrade farm again, or let the newer farm"
            " empty its queue first"
        )
    return None


def look(path: str) -> str | None:
    """``not_farms`` of the SQLite database at ``path``, read without a change: nothing
    written, no mode changed, no file made beside it. None where it is farm's, or where it
    cannot be read so (no database, locked, damaged: the server's open says why)."""
    try:
        # O_NONBLOCK: a FIFO at the path must not hold the look (it is no store: refused).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        head = os.pread(fd, len(_HEADER) + 3, 0) if regular else b""
    except OSError:
        return None
    finally:
        os.close(fd)
    if not head.startswith(_HEADER):
        return None
    # A read-only open of a file in WAL mode makes its -wal and -shm (SQLite's own rule), so
    # such a file is read as immutable: its main file alone, no lock taken. What a -wal
    # beside it holds is not seen (a table made since its last checkpoint), nor what a
    # program writing it now changes: a look for the server's refusal, not for its jobs.
    # A file in rollback mode is read with its locks, and a hot journal is left alone.
    wal = len(head) > 18 and head[18] == _WAL_VERSION
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        db = sqlite3.connect(uri + ("&immutable=1" if wal else ""), uri=True, timeout=0)
    except sqlite3.Error:
        return None
    try:
        return not_farms(db, path)
    except sqlite3.Error:  # locked, a hot journal, damage: the server's open says which
        return None
    finally:
        db.close()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
