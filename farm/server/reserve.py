"""Disk held beside the job store (``STORE-reserve``) for its deletes when the disk fills.

A finished job's delete needs room in the WAL too, and without it the jobs that finished
on a full disk would all run again after a restart. So the store holds up to
RESERVE_BYTES in a file of its own and gives that room back to the disk when a delete
cannot be written; it takes it again once the disk has room. While it is given back the
store takes no new job (``spent``): an add written in that room would leave the next
deletes none.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from farm.paths import check_own_file
from farm.server.storefile import fsize_limit
from farm.server.walcopy import WAL_FRAME_HEADER  # what a page takes in the -wal beyond its own

log = logging.getLogger("farm.server")

__all__ = [
    "RESERVE_BYTES",
    "DiskReserve",
    "checkpoint_fits",
    "disk_full",
    "shrink",
    "write_or_shrink",
]

#: Disk kept beside the store; at most 1% of the filesystem (a small volume, a tmpfs).
RESERVE_BYTES = 8 << 20


class DiskReserve:
    """``STORE-reserve``, held open: released through its descriptor, never by a path that
    may have moved."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.path = store + "-reserve"
        self._fd = -1
        self.spent = False  # given back to the disk, and not taken again yet
        self.size = 0  # what it holds whole (once make() has seen the disk)
        self._said = False  # why it could not be made, said once (``_not_made``)

    def make(self) -> bool:
        """Hold up to RESERVE_BYTES of disk, best effort: none on a disk with too little free
        (taking it back must not fill the disk again at once; one already there is still
        held) or a system without fallocate. Whether it is held whole now (not ``spent``)."""
        try:
            disk = os.statvfs(Path(self.store).parent)
            size = self.size = min(RESERVE_BYTES, disk.f_blocks * disk.f_frsize // 100)
            # A reserve left by the last run is held even when the disk is too full to grow
            # it: a server started on a full disk needs its room most.
            if size <= 0 or (
                disk.f_bavail * disk.f_frsize < 4 * size and not os.path.exists(self.path)
            ):
                return not self.spent
            if self._fd < 0:
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
                info = os.fstat(fd)
                try:
                    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                        raise PermissionError(f"{self.path} is not a file of this user's")
                    # A hard link planted beside a store in /tmp: fallocate would grow the
                    # file it names, and release() empty it.
                    if info.st_nlink != 1:
                        raise PermissionError(
                            f"{self.path} has another hard link ({info.st_nlink} names for"
                            " one file): it may be someone else's file, which a reserve"
                            " there would grow and empty"
                        )
                    check_own_file(self.path, info)
                except PermissionError as exc:
                    os.close(fd)
                    # strerror: the sentence alone, without "[Errno 1]" before it.
                    why = exc.strerror or str(exc)
                    log.warning("%s; so it is not used, and the job store has no disk reserve", why)
                    return not self.spent
                self._fd = fd
            if disk.f_bavail * disk.f_frsize < 4 * size:
                # Taking more back must not fill the disk again at once. One left given
                # back by the last run (emptied, then the server stopped or was killed) is
                # spent still: a restart must not write jobs in the room it gave the deletes.
                # (Where there is no fallocate it was never made: nothing to keep.)
                emptied = os.fstat(self._fd).st_size == 0 and hasattr(os, "posix_fallocate")
                self.spent = self.spent or emptied
                return not self.spent
            os.posix_fallocate(self._fd, 0, size)
            self.spent = False
        except AttributeError as exc:  # no posix_fallocate here: nothing to say at each start
            log.debug("no disk reserve beside the job store: %s", exc)
        except OSError as exc:
            self._not_made(exc)
        return not self.spent

    def _not_made(self, exc: OSError) -> None:
        """Say, once, why the reserve could not be made: under a file-size limit below its
        size (`ulimit -f`, systemd's LimitFSIZE=) it was left at 0 bytes with no word but
        at -v, and the store had no room for its deletes when the disk filled."""
        if self._said:
            return
        self._said = True
        why = exc.strerror or str(exc)
        if exc.errno == errno.EFBIG:
            why = f"the file-size limit{fsize_limit()}: raise it (ulimit -f, systemd's LimitFSIZE=)"
        log.warning(
            "the job store's disk reserve %s could not be made (%d bytes): %s; the store has"
            " no room kept for its deletes when the disk fills",
            self.path,
            self.size,
            why,
        )

    def release(self) -> bool:
        """Give the reserve's room back to the disk; whether there was any."""
        fd = self._fd
        try:
            if fd < 0 or os.fstat(fd).st_size == 0:
                return False
            os.ftruncate(fd, 0)
        except OSError:
            return False
        self.spent = True
        log.warning(
            "the disk of the job store %s is full: its reserve (%s) is given back so that"
            " finished jobs can still be deleted; background jobs are refused until it can"
            " be taken again",
            self.store,
            self.path,
        )
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def disk_full(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for want of room (SQLITE_FULL: the disk, or max_page_count),
    the one failure the reserve's room is given back for."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def shrink(db: sqlite3.Connection, reserve: DiskReserve, need: int | None = None) -> bool:
    """Give the disk back the room the store holds and no longer needs, then take the
    reserve again; whether room was given and the reserve is held. First the -wal's: its
    pages copied into the file and the -wal cut (where the file's growth fits), which also
    ends a ``VACUUM`` whose server was killed before its checkpoint (the file all dead pages,
    and nothing else would cut it). Then the pages the finished jobs freed (VACUUM): SQLite
    keeps a database's free pages for its next rows, but in WAL mode a row's pages go to
    the -wal first, which must grow on the disk: a store that filled a small disk stayed that
    large once its jobs had all finished, and refused every job larger than its -wal until
    the disk grew. Only where the free pages hold ``need`` bytes (the reserve's room by
    default: an add's own size) and the pages live rows take fit the disk's free room (VACUUM
    writes them again, into the -wal): not a large store's every retry, and never in the
    reserve's room, which is the deletes' (lent to a VACUUM, another process could take it
    meanwhile, and the finished jobs' deletes then had none: they ran again after a kill)."""
    footprint = _footprint(reserve.store)
    try:
        if checkpoint_fits(db, reserve.store):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cut = _footprint(reserve.store) < footprint
        pages, free, size = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
        disk = os.statvfs(Path(reserve.store).parent)
        room, writes = disk.f_bavail * disk.f_frsize, (pages - free) * (size + WAL_FRAME_HEADER)
        if not free or free * size < (reserve.size if need is None else need) or writes >= room:
            # Room the cut made, where it holds the add twice over (a frame per page, and
            # the index's): cutting a failed write's own frames made none, and its retry
            # failed again.
            return cut and room >= 2 * (need or 0) and reserve.make()
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except (sqlite3.Error, OSError) as exc:
        log.debug("the job store %s: not shrunk: %s", reserve.store, exc)
        return False
    log.info("the job store %s gave %d free pages back to the disk", reserve.store, free)
    return reserve.make()


def write_or_shrink(
    db: sqlite3.Connection,
    reserve: DiskReserve,
    adds: Sequence[tuple[Any, ...]],
    write: Callable[[], None],
) -> None:
    """``write()`` (one transaction, rolled back where it fails); where it failed for want of
    room with ``adds`` in it, the room the store no longer needs given back (``shrink``) and
    ``write()`` again. An add's pages go to the -wal, which a full disk cannot grow, however
    many pages the finished jobs freed in the file."""
    try:
        write()
    except sqlite3.Error as exc:
        need = sum(len(row[3]) for row in adds)  # its data
        if not (adds and disk_full(exc) and shrink(db, reserve, need)):
            raise
        write()


def _footprint(store: str) -> int:
    """Bytes the store's file and its -wal take."""
    total = 0
    for path in (store, store + "-wal"):
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total


def checkpoint_fits(db: sqlite3.Connection, path: str) -> bool:
    """Whether the disk has room for the store's database file (``path``) to grow to its
    full size (its pages that live only in the WAL copied in)."""
    pages: int = db.execute("PRAGMA page_count").fetchone()[0]
    size: int = db.execute("PRAGMA page_size").fetchone()[0]
    grows = pages * size - os.path.getsize(path)
    disk = os.statvfs(Path(path).parent)
    return grows <= disk.f_bavail * disk.f_frsize
