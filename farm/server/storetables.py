"""Whether a SQLite file is a store this farm reads, looked at without changing it: its
tables (farm's ``jobs``, ``damaged_jobs``, a gearmand queue it takes over, SQLite's own)
and its format.

Asked twice: by the server before it makes the file its own (mode 600, a journal and WAL
beside it, WAL mode), since another program's database named as the store by mistake was
changed so and only then refused; and by `farm check` and `farm up` before anything starts
(farm.config.servertune), which said ok of it, while the server then refused it at every
start. Split from farm/server/storeopen.py, which asks ``not_farms`` again once it holds
the store's lock. Damage too, for the server (``pages_unread``), before its open changes it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse

from farm.server.storecheck import ASIDE_TABLE
from farm.server.walcopy import MAX_COPIED, TooLarge, held, private_copy, wal_frames

__all__ = [
    "DAMAGE_CODES",
    "GEARMAND_COLUMNS",
    "HEADER_SIZE",
    "SQLITE_HEADER",
    "STORE_FORMAT",
    "header_lost",
    "look",
    "not_farms",
    "not_sqlite",
    "pages_unread",
    "quoted",
    "read_only_uri",
]

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
SQLITE_HEADER = b"SQLite format 3\x00"
HEADER_SIZE = 100
_WAL_VERSION = 2
#: Bytes 18 to 23 of a store's header as farm's SQLite writes them: the write and read
#: versions (1, a rollback journal's, or 2, WAL's), no bytes reserved at a page's end, and
#: the payload fractions 64, 32, 32 every SQLite 3 file has; else zeroed with the rest of
#: a sector (header_lost).
_HEADER_MIDDLE = (b"\x01\x01\x00\x40\x20\x20", b"\x02\x02\x00\x40\x20\x20", bytes(6))


def not_sqlite(head: bytes) -> bool:
    """Whether a file whose first bytes are ``head`` is no SQLite database at all: another
    program's file, whose fix is another path. The one rule of the server's open
    (storefile.owner_only) and of `farm check` and `farm up` (config.servertune), which
    disagreed on a file shorter than the header: one said "not a SQLite database: name
    another file", the other DamagedStore ("restore it from a backup").

    An empty file is no database yet: the store ``owner_only`` made, a server killed before
    SQLite's first write. A file shorter than the header and a part of it is a database cut
    off: SQLite writes a new store's first page, header first, in one write, so only that
    write torn (a crash, a full disk) or a copy cut short leaves one. Such a file is a
    store's, damaged (``look`` says so, as the server does), never another's: "name another
    file" stranded the store and the -wal beside it, which may hold its jobs (SQLite reads
    its pages from there), where "restore it from a backup, or move it and its -wal aside"
    loses none; nor is it taken for an empty file, a store not made yet, to write over."""
    return head[: len(SQLITE_HEADER)] != SQLITE_HEADER[: len(head)]


def header_lost(path: str, head: bytes) -> str | None:
    """Why a file ``not_sqlite`` at ``path``, whose first bytes (HEADER_SIZE of them) are
    ``head``, is a store whose header was damaged, not another program's file, in the words
    of its fix; None where nothing says so. A store whose first sector was zeroed on disk was
    refused as "not a database", with the fix of another path or none, and the farm then
    started empty, its jobs left behind. Both must say so: what a zeroed sector leaves
    (_zeroed_header), and its ``-reserve`` (reserve.DiskReserve), a regular file of this
    user's or of the store's owner (root's `farm check` on the farm's user's store judges it
    as that user's server does), which says a farm kept a store there. A -reserve alone was
    not enough: one left beside a `.dump` text or a gzip put at the store's path called it
    a store that had lost its header."""
    if not _zeroed_header(head):
        return None
    try:
        info = os.lstat(path + "-reserve")
        owner = os.lstat(path).st_uid
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_uid not in (os.geteuid(), owner):
        return None
    return (
        f"{path} has lost SQLite's header (its first 16 bytes), and the -reserve beside it"
        f" says a farm kept its jobs there{_DAMAGE_FIX}"
    )


def _zeroed_header(head: bytes) -> bool:
    """Whether ``head`` is a SQLite header whose first 16 bytes were zeroed: they are all
    NUL, and bytes 18 to 23 are still a store's, or zeroed too (a whole sector, 512 bytes
    or more, takes the header with it). Another program's file (a text, a gzip) does not
    begin with 16 NULs."""
    return len(head) >= HEADER_SIZE and not any(head[:16]) and head[18:24] in _HEADER_MIDDLE


def not_farms(db: sqlite3.Connection, path: str) -> str | None:
    """Why the database open in ``db`` (the file at ``path``) is not a store this farm
    reads, in the words of its fix where it has one of its own, or None: a table of
    another program's, or a newer farm's format."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    columns = {t: {r[1] for r in db.execute(f"PRAGMA table_info({quoted(t)})")} for t in tables}
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


def look(path: str, *, damage: bool = False) -> str | None:
    """``not_farms`` of the SQLite database at ``path``, read without a change: nothing
    written, no mode changed, no file made beside it. None where it is farm's, or where it
    cannot be read so (no database, locked, damaged: the server's open says why).
    ``damage`` (`farm check`, `farm up`): a file cut off, or whose pages SQLite cannot
    read, is said too, with the fix of the server's refusal (storefile.DamagedStore), where
    no -wal or -journal beside it may hold what it lacks, or a server hold it now."""
    try:
        # O_NONBLOCK: a FIFO at the path must not hold the look (it is no store: refused).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        head = os.pread(fd, HEADER_SIZE, 0) if stat.S_ISREG(info.st_mode) else b""
    except OSError:
        return None
    finally:
        os.close(fd)
    if not head or not_sqlite(head):
        return None  # nothing yet, or not a database: the open says so
    whole = damage and not _beside(path)
    if whole and (cut := _cut_off(head, info.st_size)):
        return f"{path} is cut off: {cut}{_DAMAGE_FIX}"
    if len(head) < len(SQLITE_HEADER):
        # Cut off within its first bytes (not_sqlite), a -wal beside it: SQLite reads it
        # only where that holds its first page (its read here made a -shm beside them).
        if damage and (unread := pages_unread(path)):  # as the server's open judges it
            return f"{path} cannot be read ({unread}){_DAMAGE_FIX}"
        return _cut_with_wal(path)
    # A read-only open of a file in WAL mode makes its -wal and -shm (SQLite's own rule), so
    # such a file is read as immutable: its main file alone, no lock taken; where that has
    # no table, what a -wal beside it holds is read from a private copy (_read_with_wal).
    # Not what a program writing it now changes: a look for the server's refusal, not for
    # its jobs.
    # A file in rollback mode is read with its locks; where they keep it from being read (a
    # hot journal, which a read-only open cannot roll back: the server's open would, into
    # another program's file), its main file alone, as immutable: never farm's store, which
    # is in WAL mode from its first write.
    wal = len(head) > 18 and head[18] == _WAL_VERSION
    try:
        why = _read(path, whole, immutable=wal)
    except sqlite3.Error:
        if wal:
            return None
    else:
        if wal and why is None and wal_frames(path) and not _tables_read(path):
            # No table in its main file, and frames in its -wal, which no server holds
            # (a running one's store is its own to read: looked at as before): another
            # program's tables may be there alone, killed before its checkpoint.
            return _read_with_wal(path)
        return why
    try:
        return _read(path, False, immutable=True)
    except sqlite3.Error:
        return None


def pages_unread(path: str) -> sqlite3.DatabaseError | None:
    """SQLite's error of damage (corrupt pages, no database) reading the tables and the
    jobs' b-tree of the store at ``path`` as the server's open would, or None: read without
    a change, before the server makes anything beside it or opens it read-write. That open
    read a damaged store, refused it, and its close checkpointed the -wal into the file and
    deleted it, which the refusal tells the user to move aside with it. None too where this
    cannot be judged so, which the open then says: a server holds it, a -journal with pages
    beside it (a rollback the open makes), an error that is no damage."""
    try:
        if held(path) or os.lstat(path + "-journal").st_size > 0:
            return None
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            head = os.pread(fd, HEADER_SIZE, 0)
        finally:
            os.close(fd)
        # In WAL mode as immutable, as look reads it: SQLite's read-only open makes a -wal.
        # So too a file cut off before byte 18 (not_sqlite): SQLite's read of it opened the
        # -wal beside it and made a -shm; that -wal is read below, from a private copy.
        damage = _damage(path, immutable=head[18:19] in (b"", bytes([_WAL_VERSION])))
        if damage is None or not wal_frames(path):
            return damage
        # The main file alone is damaged, and the -wal's frames may hold what it lacks (a
        # checkpoint cut short): read both, from a private copy (walcopy), only then. Farm's
        # own store, its -wal a killed server's, is not copied at each start so.
        with private_copy(path) as copy:
            return _damage(copy, immutable=False)
    except (TooLarge, OSError):  # not judged: past MAX_COPIED, the open says then
        return None


def _damage(path: str, *, immutable: bool) -> sqlite3.DatabaseError | None:
    """``pages_unread``'s read of the database at ``path``: the b-tree's pages, not the
    payloads' overflow, as ``_read``'s (20 ms for 100 MB of jobs)."""
    try:
        db = sqlite3.connect(
            read_only_uri(path) + ("&immutable=1" if immutable else ""), uri=True, timeout=0
        )
    except sqlite3.Error:
        return None
    try:
        if "jobs" in _tables(db):
            db.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in DAMAGE_CODES:
            return exc
    finally:
        db.close()
    return None


def _tables_read(path: str) -> bool:
    """Whether the main file of the WAL-mode database at ``path`` has a table (farm's own
    store, whose -wal a killed server left, has its ``jobs`` there from its first
    checkpoint): no copy of its -wal is made then, however large."""
    db = sqlite3.connect(read_only_uri(path) + "&immutable=1", uri=True, timeout=0)
    try:
        return bool(_tables(db))
    except sqlite3.Error:
        return True  # read once already: as it was
    finally:
        db.close()


def _read_with_wal(path: str) -> str | None:
    """``not_farms`` of the database at ``path`` with what its -wal holds, read from a
    private copy of both (walcopy): the file, its -wal and -shm left as they were. Where
    no server holds it, and it is not read so, it may be another program's: refused."""
    if held(path):
        return None
    try:
        with private_copy(path) as copy:
            return _read(copy, False, immutable=False, named=path)
    except TooLarge:
        why = f"larger than {MAX_COPIED >> 20} MiB with it"
    except (OSError, sqlite3.Error) as exc:
        why = f"not read ({exc})"
    return f"{path} may not be farm's: it has tables in its -wal alone, {why}: {_ANOTHER}"


def _cut_with_wal(path: str) -> str | None:
    """``not_farms`` of a database cut off within its header's first bytes, read with the
    -wal beside it from a private copy of both, or None: not read so (damage, which
    ``pages_unread`` says; past MAX_COPIED), or held by a server."""
    if held(path) or not wal_frames(path):
        return None
    try:
        with private_copy(path) as copy:
            return _read(copy, False, immutable=False, named=path)
    except (TooLarge, OSError, sqlite3.Error):
        return None


def read_only_uri(path: str) -> str:
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"


def _read(path: str, whole: bool, *, immutable: bool, named: str = "") -> str | None:
    """``look``'s reading of the database at ``path`` (``named`` so, a copy's): ``not_farms``,
    and where ``whole``, damage; sqlite3.Error where SQLite could not read it (locked, a hot
    journal) and it is no damage to say."""
    db = sqlite3.connect(
        read_only_uri(path) + ("&immutable=1" if immutable else ""), uri=True, timeout=0
    )
    path = named or path
    try:
        why = not_farms(db, path)
        if why is None and whole and "jobs" in _tables(db):
            # The b-tree's pages, not the payloads' overflow: 20 ms for 100 MB of jobs.
            db.execute("SELECT count(*) FROM jobs").fetchone()
        return why
    except sqlite3.Error as exc:
        if whole and (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in DAMAGE_CODES:
            return f"{path} cannot be read ({exc}){_DAMAGE_FIX}"
        raise
    finally:
        db.close()


#: SQLite's primary result codes that mean the file's bytes are not a database it can read:
#: damage alone, whose fixes (a backup, or starting empty) may give up its queued jobs (the
#: looks' here, and the server's refusal, storefile.unreadable).
DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
#: The fix of a damaged store, as the server's refusal says it (storefile.unreadable, which
#: names the -wal too: the looks judge a file with no -wal of frames beside it).
_DAMAGE_FIX = (
    "; restore it from a backup, or move it aside to start empty (its queued jobs are then lost)"
)


def _cut_off(head: bytes, size: int) -> str | None:
    """How a database file of ``size`` bytes is shorter than its header says, or None: a
    copy cut short, a disk filled while it was copied. SQLite reads its first page alone
    (the schema) without a word, and said it only when the server read the jobs."""
    if len(head) < HEADER_SIZE:
        return f"{size} bytes, less than SQLite's header of {HEADER_SIZE}"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    # The header's count of pages holds only where its two change counters agree (SQLite's
    # file format, 1.3.7); else SQLite itself goes by the file's size.
    if head[24:28] != head[92:96] or pages * page <= size:
        return None
    return f"its header counts {pages} pages of {page} bytes, and the file holds {size} bytes"


def _beside(path: str) -> bool:
    """Whether a file beside the store may hold what its main file lacks, or a server or
    program hold it now: a -wal with frames, any -wal of a store a server holds (emptied by
    its checkpoints), or a -journal with pages in it. An empty -journal is no hot one: a
    server that refused the store leaves it; nor is an empty -wal that no process holds
    (a read-only sqlite3 look leaves one), where a store cut off got past `farm check` and
    `farm up`'s look, and the server refused it after `farm up` had started."""
    if wal_frames(path) or (os.path.lexists(path + "-wal") and held(path)):
        return True
    try:
        return os.lstat(path + "-journal").st_size > 0
    except FileNotFoundError:
        return False


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
