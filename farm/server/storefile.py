"""The store's file before SQLite opens it: ours alone, a database or nothing yet.

Split from farm/server/store.py, which re-exports the errors.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import sqlite3
import stat

from farm.paths import check_own_file
from farm.server.storetables import (
    DAMAGE_CODES,
    HEADER_SIZE,
    header_lost,
    look,
    not_sqlite,
    pages_unread,
)

__all__ = [
    "StoreError",
    "DamagedStore",
    "StoreInUse",
    "StoreUnopenable",
    "StoreUnreadable",
    "OpenFile",
    "drop_empty_journal",
    "drop_made",
    "io_failed",
    "may_hold_jobs",
    "close_to_others",
    "owner_only",
    "unreadable",
    "unwritten",
]

log = logging.getLogger("farm.server")


class StoreError(Exception):
    """The store cannot be opened or written; background submits are refused."""


class DamagedStore(StoreError):
    """The store is a SQLite file that cannot be read: its message says the fix itself."""


class StoreUnreadable(StoreError):
    """The store cannot be read now, with no damage to it (``unreadable``): its message says
    the fix itself, which keeps its queued jobs."""


class StoreUnopenable(StoreError):
    """A store file that was there could not be opened (its mode, an immutable attribute, its
    owner): it may hold queued jobs, so the fix is the file's, never another path, which
    would leave them behind (farm.server.refusals, the hint ``held``)."""


class StoreInUse(StoreError):
    """Another server holds the store (SQLite's exclusive lock)."""


class OpenFile:
    """The file the store's database is open on, to see it deleted or replaced while the
    server runs: SQLite writes on into the file it holds open, unseen, and every job it
    took was lost at the next stop, with no word in the log."""

    def __init__(self, path: str) -> None:
        self.path = path
        opened = os.stat(path)
        # Held open by SQLite, the file keeps its inode: no new file at the path can share it.
        self._identity = (opened.st_dev, opened.st_ino)

    def gone(self) -> str | None:
        """How the path no longer names the file, if it does not (``deleted``, ``replaced``):
        one stat, about a microsecond, beside a commit's tens."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # not known to be gone: the write itself says what fails
        if (now.st_dev, now.st_ino) == self._identity:
            return None
        return "replaced"

    @staticmethod
    def why(happened: str) -> str:
        """The store's failure, for the log and QUEUE_ERROR."""
        # A restart reads what is at the path: the file put there, or a new store.
        then = "the file now at the path" if happened == "replaced" else "a new store"
        return (
            f"the file was {happened} while the server runs; the jobs stored so far stay in"
            " memory only and are lost if the server stops before they run (put the file"
            f" back, or let them run before a restart, which reads {then})"
        )


def owner_only(path: str) -> list[str]:
    """Create the store closed to other users, or close one left open: its rows are the
    jobs' payloads. A link at the path is refused (ELOOP), as a planted one would be
    followed, and so is a file (the store, its journal, WAL or shared memory) of another
    user: one who made it first, in /tmp say, would keep the jobs written into it, or have
    SQLite roll theirs into it (paths.check_own_file). The side files it made, for
    ``drop_made``."""
    # O_NONBLOCK: a FIFO at the path must not hold the server (it is refused below).
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # its pread said "Illegal seek"
            raise StoreError(f"the job store {path} is not a regular file")
        _own(path, path, os.fstat(fd))
        head = os.pread(fd, HEADER_SIZE, 0)
        if not_sqlite(head):  # leave another file as it was; a part of the header is damage
            if lost := header_lost(path, head):  # a store's, damaged: another path strands its jobs
                raise DamagedStore(f"the job store {lost}")
            raise StoreError(f"cannot open the job store {path}: file is not a database")
        # And another program's database: it was made 600, given a journal and a WAL, and
        # only then refused, by tables it would not have had as farm's store.
        if head and (why := look(path)):
            raise StoreError(f"the job store {why}")
        # Damage judged before any change too: SQLite's read-write open read a damaged
        # store, and its close checkpointed the -wal into it; the journal and WAL made here
        # were left beside it, and a side file left open to others made 600.
        if head and (damage := pages_unread(path)):
            raise unreadable(path, damage)
    finally:
        os.close(fd)
    made: list[str] = []
    try:
        for side in (path + "-journal", path + "-wal"):
            if _side_file(path, side, make=True):
                made.append(side)
        _side_file(path, path + "-shm", make=False)  # never used: the store is opened EXCLUSIVE
    except (StoreError, OSError):
        drop_made(made)
        raise
    return made


def drop_made(made: list[str]) -> None:
    """Remove the side files ``owner_only`` made (``made``) for a store then refused, where
    SQLite left them empty: a refused store's directory as it was. Best effort."""
    for side in made:
        try:
            if os.lstat(side).st_size == 0:
                os.unlink(side)
        except OSError:
            pass


def close_to_others(path: str) -> None:
    """Close a store left open to other users (the farm's group may hold accounts that must
    not read the jobs): only once SQLite has read it as farm's store, with its lock held
    (storeopen). Before that, a file look() could not read (damaged, or another program's
    it took for none) was made 600 and then refused, its mode not as it was.

    Through an O_PATH descriptor of the file itself (a link at the path is not followed):
    by the path, a link swapped in after the look (a directory others may rename in) had
    its target made 600; and closing a readable descriptor of the file drops the process's
    POSIX locks on it, SQLite's exclusive lock too, so that a second server then shared the
    store. An O_PATH descriptor's close drops none (Linux: FMODE_PATH)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_nlink != 1 or info.st_uid != os.geteuid():
            # Not the file owner_only passed (one link, ours): a hard link to another file
            # renamed in after the open, whose mode is not ours to change.
            log.warning("the job store %s is no longer the file opened; its mode is left", path)
            return
        if stat.S_ISREG(info.st_mode) and mode & 0o077:
            log.warning("the job store %s was open to others; closing it (mode 600)", path)
            os.chmod(f"/proc/self/fd/{fd}", mode & ~0o077)  # fchmod refuses O_PATH
    finally:
        os.close(fd)


def _own(path: str, where: str, info: os.stat_result) -> None:
    """StoreError unless the file at ``where`` (the store at ``path`` or a side file of it)
    is one we may write as ours (paths.check_own_file): farm's own refusal, whose message
    says its fix; not an open that failed (StoreUnopenable), whose fix is the file's."""
    try:
        check_own_file(where, info)
    except PermissionError as exc:
        why = f"cannot open the job store {path}: {exc.strerror or exc}"
        if where == path and info.st_size and info.st_nlink == 1 and _closed_dir(path):
            # A store with rows in it of another uid: a restored copy (rsync -a from a host
            # where farm's user has another uid) was told "remove it", and its jobs with it.
            # Not in a directory others may write (a sticky /tmp): there another user may
            # have planted it, to be told to take it in.
            raise StoreUnreadable(
                f"{why}; if it is a copy you put there (a restored backup), chown it to this"
                " user: it may hold queued jobs"
            ) from None
        raise StoreError(why) from None


def _closed_dir(path: str) -> bool:
    """Whether the directory of ``path`` is this user's or root's and no other user may
    write to it (no group or other write bit, sticky or not): a file there of another uid
    was put there by one of them, or by the one who owns the directory."""
    try:
        info = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    mine = info.st_uid in (0, os.geteuid())
    return mine and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _not_regular(path: str, side: str) -> StoreError:
    """Farm's refusal of a side file that is not a regular file: SQLite would follow it."""
    return StoreError(f"cannot open the job store {path}: {side} is not a regular file")


def _side_file(path: str, side: str, *, make: bool) -> bool:
    """Refuse a side file of SQLite's that is not ours, close one left open, and (``make``)
    make the journal and WAL here, as SQLite opens them without O_EXCL: one another user
    made between this check and its open (inotify on /tmp says when) would be used, a WAL
    they hold open then read by them (payloads), and a hot journal rolled back into the
    store (their jobs in place of ours). A journal left empty is removed once the store is
    open (drop_empty_journal). Whether it made the file."""
    made = False
    try:
        info = os.lstat(side)  # first: a file of another user is named as such, not EACCES
    except FileNotFoundError:
        if not make:
            return False
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(side, flags, 0o600)
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # a link made since the lstat
                raise
            raise _not_regular(path, side) from None
        try:
            info = os.fstat(fd)  # ours, or one made since the lstat: checked alike
        finally:
            os.close(fd)
        made = True
    if not stat.S_ISREG(info.st_mode):  # SQLite would open it through a link
        raise _not_regular(path, side)
    _own(path, side, info)
    if info.st_mode & 0o077:
        os.chmod(side, stat.S_IMODE(info.st_mode) & ~0o077)
    return made


def may_hold_jobs(path: str) -> bool:
    """Whether a store file is at ``path`` already (a regular file, not empty), so that it
    may hold queued jobs: looked at before the open, which makes one where there is none."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0


def drop_empty_journal(path: str) -> None:
    """Remove the empty journal ``owner_only`` made, if SQLite left it (a store already in
    WAL mode never writes one); one with pages in it stays for SQLite."""
    journal = path + "-journal"
    try:
        if os.lstat(journal).st_size == 0:
            os.unlink(journal)
    except FileNotFoundError:
        pass


#: Those of a file SQLite could not make or write while it read the store (a temporary file
#: of a sort, the WAL's recovery): no want of the store's, but of room or of a limit.
_WRITE = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN})
#: The I/O errors among them that are a read of the disk failing (EIO), not a write: no
#: room to free, but a disk to look at (``unreadable``).
_READ = frozenset({sqlite3.SQLITE_IOERR_READ, sqlite3.SQLITE_IOERR_SHORT_READ})


def io_failed(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error is a read or a write of its that failed, or a full disk: said
    by ``unreadable``, never answered with the fix of a permission. Not SQLITE_CANTOPEN,
    which at the open is one (a -wal made immutable); at the read, a temporary file's."""
    return ((exc.sqlite_errorcode or 0) & 0xFF) in {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL}


def _room(code: int) -> bool:
    """Whether SQLite's (extended) code is of a file it could not make or write (``_WRITE``):
    the want of room or of a limit, not a read that failed (``_READ``)."""
    return (code & 0xFF) in _WRITE and code not in _READ


def unreadable(path: str, exc: sqlite3.Error) -> StoreError:
    """Why the store at ``path`` cannot be read, by SQLite's error, in the words of its fix.
    Only corrupt pages and a file that is no database are damage (DamagedStore). Any other
    error is not the file's (StoreUnreadable): a healthy store that a file-size limit kept
    from being read was called damaged, with the advice to move it aside, and every queued
    job was lost; said as a failed write, a failed read, or else as it is, the jobs kept in
    it."""
    if ((exc.sqlite_errorcode or 0) & 0xFF) in DAMAGE_CODES:  # the extended code's primary one
        return DamagedStore(
            f"the job store {path} cannot be read ({exc}); restore it from a backup,"
            # The -wal holds the latest commits: the file moved alone is not the whole store.
            " or move it and its -wal aside to start empty (its queued jobs are then lost)"
        )
    # Its name too: SQLITE_IOERR_WRITE says which write, where "disk I/O error" does not.
    why = f"{exc}, {exc.sqlite_errorname}" if exc.sqlite_errorname else str(exc)
    if _room(exc.sqlite_errorcode or 0):
        where = os.path.dirname(os.path.abspath(path))
        return StoreUnreadable(
            f"the job store {path} cannot be read ({why}): SQLite could not write a file it"
            " needs to read it, which is no damage to the store; its queued jobs stay in it:"
            " free space, or raise the file-size limit (ulimit -f, systemd's LimitFSIZE=),"
            f" in {where} and in the temporary directory (SQLITE_TMPDIR, TMPDIR, /var/tmp,"
            " /tmp), then start the server again"
        )
    if (exc.sqlite_errorcode or 0) in _READ:
        return StoreUnreadable(
            f"the job store {path} cannot be read ({why}): a read of the disk failed, which"
            " SQLite does not call damage; its queued jobs stay in it: see the kernel's log"
            " (dmesg) for the disk; a copy of the store and its -wal on a sound disk keeps them"
        )
    return StoreUnreadable(
        f"the job store {path} cannot be read ({why}), which SQLite does not call damage;"
        " its queued jobs stay in it: start the server again once that is fixed"
    )


#: The I/O errors of a write that did not fit: the file could not grow (EFBIG past the
#: file-size limit, an EIO of the disk's too: SQLite says both alike).
_GROW = frozenset({sqlite3.SQLITE_IOERR_WRITE, sqlite3.SQLITE_IOERR_TRUNCATE})


def unwritten(path: str, exc: sqlite3.Error) -> str:
    """Why a write of the running server's store failed, for its ERROR line and QUEUE_ERROR:
    SQLite's words and its code's name, and, where the file could not grow (a full disk,
    or a write past the file-size limit), the fix in the words of ``unreadable``'s. A store
    under `ulimit -f` refused every background job with "disk I/O error", and no word of the
    limit, which SQLite says as it says a failing disk."""
    # getattr: an error of the module's own (a closed database) has no code of SQLite's.
    name = getattr(exc, "sqlite_errorname", None)
    why = f"{exc}, {name}" if name else str(exc)
    code = getattr(exc, "sqlite_errorcode", None) or 0
    if code & 0xFF != sqlite3.SQLITE_FULL and code not in _GROW:
        return why
    where = os.path.dirname(os.path.abspath(path))
    return (
        f"{why}: free space in {where}, or raise the file-size limit{fsize_limit()} (ulimit"
        " -f, systemd's LimitFSIZE=); else see the kernel's log (dmesg) for the disk"
    )


def fsize_limit() -> str:
    """The file-size limit (RLIMIT_FSIZE) this process runs under, as words for a hint
    (", 1048576 bytes now"), or nothing where there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return "" if soft == resource.RLIM_INFINITY else f", {soft} bytes now"
