"""A SQLite file in WAL mode as its -wal leaves it, read without a change: whether a server
holds it now (``held``), whether its -wal holds frames its main file lacks (``wal_frames``),
and a private copy of both to read (``private_copy``).

storetables' look read such a file as immutable, its main file alone: another program's
database killed before a checkpoint had its tables in its -wal alone, read as no tables,
so the server made it 600, opened it, refused it, and its close checkpointed the -wal into
the file. A copy is read instead, never the file: SQLite's read-only open of it would
make a -shm beside it, and recover the -wal as a reader may.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "MAX_COPIED",
    "WAL_FRAME_HEADER",
    "WAL_HEADER",
    "TooLarge",
    "held",
    "copy_file",
    "private_copy",
    "wal_frames",
]

#: Bytes of a file and its -wal copied at most for a look: a look at start must not fill
#: $TMPDIR; a file that needs more is refused (storetables says why).
MAX_COPIED = 64 << 20

#: SQLite's -wal format: a header, then frames of a header and a page each. A -wal of no
#: more than its header holds no frame (SQLite's reset one, say).
WAL_HEADER = 32
WAL_FRAME_HEADER = 24

#: SQLite's lock bytes (os_unix.c): a server holding the store keeps a write lock on them.
_PENDING_BYTE = 0x40000000
_LOCK_SPAN = 2 + 510  # RESERVED, PENDING's neighbour, and the SHARED range


class TooLarge(Exception):
    """A file and its -wal larger together than MAX_COPIED: not copied."""


def held(path: str | os.PathLike[str]) -> bool:
    """Whether a process holds a write lock on the store's SQLite lock bytes (a running
    server: locking_mode EXCLUSIVE), asked of the kernel: no SQLite open, no file made."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return True  # cannot be looked into now: as held
    try:
        lock = struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_SET, _PENDING_BYTE, _LOCK_SPAN, 0)
        got = fcntl.fcntl(fd, fcntl.F_GETLK, lock)
        kind: int = struct.unpack("hhqqi", got)[0]
        return kind != fcntl.F_UNLCK
    except OSError:
        return True
    finally:
        os.close(fd)


def wal_frames(path: str) -> bool:
    """Whether a -wal beside ``path`` may hold frames (a regular file past its header). One
    that is not a regular file is the server's refusal to make (storefile's side files)."""
    try:
        info = os.lstat(path + "-wal")
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > WAL_HEADER


@contextmanager
def private_copy(path: str) -> Iterator[str]:
    """A copy of the database at ``path`` and its -wal, in a directory of this process's
    own (removed after), its path yielded. OSError where either cannot be read as a regular
    file (a link is not followed); TooLarge past MAX_COPIED."""
    with tempfile.TemporaryDirectory(prefix="farm-look-") as where:
        copy = os.path.join(where, "store.db")
        left = MAX_COPIED
        for source, target in ((path, copy), (path + "-wal", copy + "-wal")):
            left -= copy_file(source, target, left)
        yield copy


def copy_file(source: str, target: str, limit: int) -> int:
    """Copy ``source`` to ``target``, a new file (mode 600; FileExistsError where one is), at
    most ``limit`` bytes (TooLarge past it): its size."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{source} is not a regular file")
        if info.st_size > limit:
            raise TooLarge(source)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(out, "wb") as dst:
            left = info.st_size  # no more: a file another program writes on may grow
            while left > 0 and (chunk := src.read(min(left, 1 << 20))):
                dst.write(chunk)
                left -= len(chunk)
        return info.st_size
