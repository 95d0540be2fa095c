"""The store's file before SQLite opens it: ours alone, a database or nothing yet.

Split from farm/server/store.py, which re-exports the errors.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from farm.paths import check_own_file

__all__ = ["StoreError", "DamagedStore", "damaged", "owner_only"]

log = logging.getLogger("farm.server")


class StoreError(Exception):
    """The store cannot be opened or written; background submits are refused."""


class DamagedStore(StoreError):
    """The store is a SQLite file that cannot be read: its message says the fix itself."""


#: The first bytes of every SQLite 3 database file.
_SQLITE_HEADER = b"SQLite format 3\x00"


def owner_only(path: str) -> None:
    """Create the store closed to other users, or close one left open: its rows are the
    jobs' payloads. SQLite gives its WAL the database file's mode; one already there is
    closed too. A link at the path is refused (ELOOP), as a planted one would be followed,
    and so is a file (the store, its WAL or shared memory) of another user: one who made it
    first, in /tmp say, would keep the jobs written into it (paths.check_own_file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        check_own_file(path, os.fstat(fd))
        head = os.pread(fd, len(_SQLITE_HEADER), 0)
        if head and head != _SQLITE_HEADER[: len(head)]:  # leave another file as it was
            raise StoreError(f"cannot open the job store {path}: file is not a database")
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:  # the farm's group may hold accounts that must not read the jobs
            log.warning("the job store %s was open to others; closing it (mode 600)", path)
            os.fchmod(fd, mode & ~0o077)
    finally:
        os.close(fd)
    for side in (path + "-wal", path + "-shm"):
        try:
            info = os.lstat(side)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):  # SQLite would open it through a link
            raise PermissionError(errno.EPERM, f"{side} is not a regular file")
        check_own_file(side, info)
        if info.st_mode & 0o077:
            os.chmod(side, stat.S_IMODE(info.st_mode) & ~0o077)


def damaged(path: str, why: object) -> DamagedStore:
    return DamagedStore(
        f"the job store {path} cannot be read ({why}); restore it from a backup,"
        " or move it aside to start empty (its queued jobs are then lost)"
    )
