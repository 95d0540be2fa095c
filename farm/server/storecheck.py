"""Each stored job's checksum, and the rows that fail it kept aside.

SQLite keeps no checksum of a row's bytes: a byte flipped in the file (a failing disk, a
bad copy of a backup) was replayed as it was, and a worker ran garbage, or a job ran at
another time. So each row carries a CRC-32 of the fields that never change once it is
written (``row_checksum``), computed by the writer thread as it writes the row, and checked
when the store is read at start (``split_damaged``). What CRC-32 guarantees is narrower
than "any 32 bits": it catches every change confined to one run of at most 32 bits (a
flipped bit, up to 4 bytes in a row changed), and any other change all but about once in
2**32 (a few bits scattered over a large payload can pass). It is no defence against
someone who may write the file (they may write its checksum too). The row's id, submit
time, count of worker deaths (which changes) and side (``local``) are not covered.

A row that fails it is neither run nor deleted: it is moved, as it was read, into the table
``damaged_jobs`` of the same file (``set_aside``), said once in the log, for the operator to
look into (docs/operations.md, "When things go wrong"). Rows of an older farm have no
checksum (NULL), nor do the jobs taken over from gearmand's table: they are trusted, as
before; so is any row whose checksum reads NULL, damage that made it so included (its
fields are only checked to be of the types farm writes, ``_fails``).

Split from farm/server/store.py, which stages the jobs and writes them.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
import zlib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ASIDE_TABLE",
    "copy_aside",
    "kept_aside",
    "read_rows",
    "row_checksum",
    "set_aside",
    "split_damaged",
]

log = logging.getLogger("farm.server")

#: Where the rows that fail their checksum are kept, in the store's own file.
ASIDE_TABLE = "damaged_jobs"

_ASIDE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {ASIDE_TABLE} (
    aside     INTEGER PRIMARY KEY,
    id        INTEGER,
    function  BLOB,
    uniq      BLOB,
    data      BLOB,
    priority  INTEGER,
    reducer   BLOB,
    run_at    REAL,
    created   REAL,
    retries   INTEGER,
    local     INTEGER,
    checksum  INTEGER,
    set_aside REAL NOT NULL
)
"""

#: The lengths and numbers of a row, ahead of its bytes: fields run together ("ab" + "c"
#: against "a" + "bc") must not sum alike.
_HEAD = struct.Struct("<IIIiqd")


def row_checksum(
    function: bytes,
    unique: bytes,
    data: bytes,
    priority: int,
    reducer: bytes | None,
    when: float,
) -> int:
    """The CRC-32 of a job's fixed fields: what it runs, on what, when and in which order."""
    head = _HEAD.pack(
        len(function),
        len(unique),
        len(data),
        priority,
        -1 if reducer is None else len(reducer),
        when,
    )
    crc = zlib.crc32(head)
    crc = zlib.crc32(function, crc)
    crc = zlib.crc32(unique, crc)
    crc = zlib.crc32(data, crc)
    return zlib.crc32(reducer or b"", crc)


#: The types farm writes each column of a row as read (TEXT read as bytes), id aside.
_TYPES: tuple[tuple[type, ...], ...] = (
    (bytes,),  # function
    (bytes,),  # uniq
    (bytes,),  # data
    (int,),  # priority
    (bytes, type(None)),  # reducer
    (float, int),  # run_at
    (float, int),  # created
    (int,),  # retries
    (int,),  # local
    (int, type(None)),  # checksum
)


def _fails(row: Sequence[object]) -> bool:
    """Whether a row read as (id, function, uniq, data, priority, reducer, run_at, created,
    retries, local, checksum) fails its checksum; one without any is trusted, unless a field
    is of a type farm never writes there (its header damaged: a number read as TEXT)."""
    if not all(isinstance(v, t) for v, t in zip(row[1:], _TYPES, strict=True)):
        return True
    checksum = row[10]
    if checksum is None:
        return False
    try:
        fields: Any = row[1:7]  # of any type SQLite gave: a damaged row's may be another
        return bool(row_checksum(*fields) != checksum)
    except (TypeError, struct.error):  # a field of another type than farm writes: damaged
        return True


def read_rows(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every row of ``jobs`` in id order, each field read as bytes: a TEXT field that is not
    UTF-8 (damage, or a row of an older farm) is checked as any other rather than refused by
    the read. Only for this read: the connection's other queries expect str."""
    factory = db.text_factory
    db.text_factory = bytes
    try:
        # By id alone, the table's own order (id is its rowid): any other order is a sort
        # SQLite spills to a temporary file as large as the payloads, which a file-size
        # limit or a full temporary directory refused, and a healthy store was called
        # unreadable at every start. The caller orders the rows it keeps (SQLiteStore.load).
        return db.execute(
            "SELECT id, function, uniq, data, priority, reducer, run_at, created, retries,"
            " local, checksum FROM jobs ORDER BY id"
        ).fetchall()
    finally:
        db.text_factory = factory


def split_damaged(rows: list[Any]) -> tuple[list[Any], list[Any]]:
    """``rows`` (as ``_fails`` reads them) parted into the whole ones and the damaged."""
    whole: list[Any] = []
    damaged: list[Any] = []
    for row in rows:
        (damaged if _fails(row) else whole).append(row)
    return whole, damaged


def set_aside(db: sqlite3.Connection, path: str, damaged: list[Any]) -> bool:
    """Move ``damaged`` rows from ``jobs`` into ``damaged_jobs`` in one transaction, each
    said once; False when it cannot be written (a full disk): they stay in ``jobs``, are
    not run this time either, and are said again at the next start."""
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(_ASIDE_SCHEMA)
        # A row of its own (aside): a job's id may be taken again by a later job (the next
        # id is the largest left plus one), which may in turn be set aside.
        _insert_aside(db, damaged)
        db.executemany("DELETE FROM jobs WHERE id = ?", [(row[0],) for row in damaged])
        db.execute("COMMIT")
        moved = True
    except sqlite3.Error as exc:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        log.error("the job store %s: cannot set damaged jobs aside: %s", path, exc)
        moved = False
    where = f"kept in its table {ASIDE_TABLE}" if moved else "left in its table jobs"
    for row in damaged:
        log.error(
            "the job store %s: a job fails its checksum (its bytes changed on disk): function"
            " %r, unique %r, row %d; not run, %s (docs/operations.md, When things go wrong)",
            path,
            row[1],
            row[2],
            row[0],
            where,
        )
    return moved


#: The columns of ``damaged_jobs``, in its schema's order.
_ASIDE_COLUMNS = (
    "aside, id, function, uniq, data, priority, reducer, run_at, created, retries, local,"
    " checksum, set_aside"
)


def _insert_aside(db: sqlite3.Connection, rows: list[Any]) -> None:
    """``jobs`` rows (all their columns) into ``damaged_jobs``, set aside now."""
    now = time.time()
    values = ", ".join(["?"] * 12)  # every column but aside, which SQLite numbers
    db.executemany(
        f"INSERT INTO {ASIDE_TABLE} ({_ASIDE_COLUMNS.partition(', ')[2]}) VALUES ({values})",
        [(*row, now) for row in rows],
    )


def _unreadable(path: str, exc: sqlite3.Error, then: str) -> None:
    """Say that the store at ``path`` has a table of jobs kept aside it cannot read, and
    ``then``, what follows from that: copying it (``copy_aside``) and counting it
    (``kept_aside``) say it alike."""
    if "no such table" not in str(exc):  # none ever was: nothing to say
        log.error(
            "the job store %s: its table %s cannot be read (%s); %s", path, ASIDE_TABLE, exc, then
        )


def copy_aside(
    old: sqlite3.Connection, new: sqlite3.Connection, damaged: list[Any], path: str
) -> int:
    """The rows ``old`` keeps aside, as they are, and ``damaged`` (rows of ``jobs`` that
    fail their checksum now), written into ``new``'s ``damaged_jobs`` in one transaction:
    the store made again (farm.server.storeagain) keeps them for the operator, and its next
    start says they are there. How many it holds. Old's table unreadable is said and left:
    it must not keep the jobs from their new store (as ``kept_aside`` at a start)."""
    factory = old.text_factory
    old.text_factory = bytes  # as read_rows: damage that made a BLOB TEXT keeps its bytes
    try:
        kept = old.execute(f"SELECT {_ASIDE_COLUMNS} FROM {ASIDE_TABLE}").fetchall()
    except sqlite3.Error as exc:
        _unreadable(path, exc, "not kept in the store made again")
        kept = []
    finally:
        old.text_factory = factory
    if not kept and not damaged:
        return 0
    values = ", ".join(["?"] * 13)
    new.execute("BEGIN IMMEDIATE")
    try:
        new.execute(_ASIDE_SCHEMA)
        new.executemany(f"INSERT INTO {ASIDE_TABLE} ({_ASIDE_COLUMNS}) VALUES ({values})", kept)
        _insert_aside(new, damaged)
        new.execute("COMMIT")
    except BaseException:
        new.execute("ROLLBACK")
        raise
    return len(kept) + len(damaged)


def kept_aside(db: sqlite3.Connection, path: str) -> int:
    """How many damaged jobs the store keeps aside (0 when it never set one aside, or when
    the table cannot be read: said, and the jobs in ``jobs`` replay all the same)."""
    try:
        (count,) = db.execute(f"SELECT COUNT(*) FROM {ASIDE_TABLE}").fetchone()
    except sqlite3.Error as exc:
        _unreadable(
            path, exc, "the other jobs run as usual (docs/operations.md, When things go wrong)"
        )
        return 0
    return int(count)
