"""The pool-wide record of Executor calls already run, so a captured call cannot run twice.

A signed call is valid for anyone who holds its bytes: whoever captured one
could submit it again. Each call carries a fresh id and an expiry (see
``farm.executor.payload``); before running one, a worker claims its id here, in a
directory named for the farm's key that every worker of the pool shares (and
that outlives any one of them, so recycling forgets nothing). The server's own
retry of the same job (its worker died) carries the same handle and may run; a
second submission of the bytes is a new job with a new handle and is refused.

Claims are kept small, since a busy pool makes thousands a second and each must
be kept until its call expires: one 12-byte record (a 64-bit hash of the call id,
the CRC-32 of the job handle) appended to the file of the call's expiry minute.
No lock: an append (``O_APPEND``) lands whole and in one order for every reader, so
the first record of a call id in its file is the claim that counts, and a worker reads
the file on past its own record before it runs the call. Two workers that claim one id
at once both read the same first record: one runs the call, the other refuses it.
(Under ``flock`` a claim cost four system calls; now it costs an append and a read.
One file per claim, as before, cost about 1.2 KB of memory each in tmpfs: 100 GB a
day at 1,000 calls a second.) A worker keeps the records of the two minutes it claims in
now in memory, reads what others appended since it last looked, and drops a
minute's file once every call in it has expired.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
import zlib
from pathlib import Path

from farm.executor.signing import SignatureError, key_path
from farm.paths import UnsafeDirectory, private_dir

log = logging.getLogger("farm.executor")

__all__ = ["ReplayGuard"]

#: How often (seconds) a worker sweeps claims whose calls have expired.
SWEEP_EVERY = 60.0
#: The claims directory's name in /dev/shm (``farm-UID-NAME-DIGEST``). farm before the
#: 12-byte records used ``calls``, a link per claim and 24-hour calls: such a directory is
#: removed once a day has passed since its last claim (see ReplayGuard.sweep).
NAME, LEGACY_NAME, LEGACY_TTL = "claims", "calls", 24 * 3600


def default_directory() -> Path:
    """Where the pool keeps its claims: in shared memory (a claim on a disk's file system
    cost ~0.8 ms here, in tmpfs ~7 µs), in a directory private to this user and named for
    the farm's key; beside the key file when shared memory is missing or not safe.

    Every worker of the pool must choose the same: another user who made the directory
    in /dev/shm first (its name can be worked out) and removed it later would otherwise
    have the workers started before and after keep claims in two places, and a captured
    call run once in each. So once one worker has fallen back to the key's directory,
    every later one uses it too (its existence is the choice)."""
    key = key_path()
    beside_key = key.with_name(NAME)  # not "calls-run": the first farms made that by default
    if beside_key.is_dir():
        return beside_key
    shm = shm_directory(key)
    if shm.parent.is_dir():
        try:
            # Not XDG_RUNTIME_DIR's fix (the sockets'): the warning below says what to do.
            return private_dir(shm, fix="left alone")
        except (UnsafeDirectory, OSError) as exc:
            log.warning(
                "the replay record's directory in %s is not safe to use (%s); this pool keeps"
                " its claims in %s from now on (slower; remove that directory to go back"
                " to %s once no worker runs)",
                shm.parent,
                exc,
                beside_key,
                shm.parent,
            )
    return beside_key


def shm_directory(key: Path) -> Path:
    """The claims directory in /dev/shm of the pool whose key file is ``key`` (made or not):
    named for the key, so the pools of two farms never share one, and a farm that is gone
    can have its own removed (a benchmark's, whose key went with its directory)."""
    digest = hashlib.sha256(str(key.resolve()).encode()).hexdigest()[:12]
    return Path("/dev/shm") / f"farm-{os.getuid()}-{NAME}-{digest}"


#: Claims are filed by their call's expiry, this many seconds to a file.
BUCKET = 60
#: Minutes whose claims a worker keeps in memory (the current ones; others are re-read).
KEPT = 2
_RECORD = 12  # BLAKE2b-64 of the call id | crc32 of the handle (4 bytes, little endian)
_CHUNK = _RECORD * 5461  # a read of the claims file: just under 64 KiB, whole records


def _fold(call_id: bytes) -> bytes:
    """8 bytes that depend on all of the call id's."""
    return hashlib.blake2b(call_id, digest_size=8).digest()


class ReplayGuard:
    """Claims call ids for this pool; refuses a call that already ran or has expired."""

    def __init__(self, directory: Path | None = None) -> None:
        self._chosen = directory is None  # default_directory's choice: made again if it goes
        self.directory = directory or default_directory()
        self._dir = -1
        self._open_directory()
        self._swept = 0.0
        # Per expiry minute: its file, how much of it was read, and the claims read.
        self._files: dict[int, tuple[int, list[int], dict[bytes, int]]] = {}

    def claim(self, call_id: bytes, expires: int, handle: str, *, renewed: bool = False) -> None:
        """Record that this job runs this call; SignatureError if it may not. ``renewed``:
        claimed again once the record was found removed (once: no loop however often)."""
        now = time.time()
        if now > expires:
            raise SignatureError(f"the call expired {now - expires:.0f}s ago; refused unrun")
        key = _fold(call_id)
        mark = zlib.crc32(handle.encode())
        fd, read, seen = self._bucket(expires // BUCKET)
        prior = seen.get(key)  # known from an earlier read: no need to look again
        if prior is None:
            # Append, then read on past it: the first record of this id in the file is
            # the claim that counts, whichever worker wrote it (see the module docstring).
            try:
                written = os.write(fd, key + mark.to_bytes(4, "little"))  # O_APPEND
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise self._full(exc.strerror) from None
            if written != _RECORD:
                raise self._full("a write cut short")
            if not os.fstat(fd).st_nlink and not renewed:
                # The record was removed while this minute's file was kept open: a claim
                # appended to the unlinked file is seen by no worker started since (they
                # made a fresh directory), and the call ran in each. Claimed again in the
                # record as it is now. One fstat a call: about 1 µs of a claim's 4 to 5.
                self._renew()
                return self.claim(call_id, expires, handle, renewed=True)
            self._catch_up(fd, read, seen)
            prior = seen.get(key)
            if prior is None:  # our record is not where records are: a short write broke it
                raise SignatureError(
                    f"the pool's replay record {self.directory} is damaged (a write cut short:"
                    " was its file system full?); refused unrun"
                )
            if time.time() > expires:  # its minute's file may be swept from now on
                raise SignatureError("the call expired; refused unrun")
        if prior != mark:
            raise SignatureError("this call already ran (a replayed payload); refused unrun")
        # prior == mark: this job's claim, or the server runs the job again after its
        # worker died (the same handle)
        if now - self._swept > SWEEP_EVERY:
            self.sweep(now)

    def _full(self, why: str | None) -> OSError:
        """The error of a claim with no room, naming the record and what makes room: every
        call is refused until then, and a container's /dev/shm (64 MB unless the container
        is given more) holds the claims of about 250 jobs a second (they are kept for the
        calls' six hours)."""
        return OSError(
            errno.ENOSPC,
            f"the pool's replay record {self.directory} is full ({why}): every call is refused"
            " unrun until its file system has room; in a container, give it a larger /dev/shm"
            " (docker run --shm-size, a Kubernetes emptyDir of medium Memory at /dev/shm):"
            " the claims of 1,000 jobs a second need 260 MB (docs/executor.md, Replay)",
        )

    def _bucket(self, bucket: int) -> tuple[int, list[int], dict[bytes, int]]:
        entry = self._files.pop(bucket, None)
        if entry is None:
            name = f"claims-{bucket}"
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            try:
                fd = os.open(name, flags, 0o600, dir_fd=self._dir)
            except FileNotFoundError:
                # The directory went under the pool (logind's RemoveIPC at a logout, a
                # cleanup of /dev/shm): made again, checked as at the start, or every call
                # would fail until the workers were replaced. Its claims went with it, as
                # they would with a reboot.
                self._renew()
                fd = os.open(name, flags, 0o600, dir_fd=self._dir)
            entry = (fd, [0], {})
            while len(self._files) >= KEPT:  # the least recently used: re-read if it comes back
                os.close(self._files.pop(next(iter(self._files)))[0])
        self._files[bucket] = entry  # last: the most recently used
        return entry

    def _renew(self) -> None:
        """The record was removed under the pool: make it again and let go of its files."""
        log.warning("the replay record %s was removed; making it again", self.directory)
        # The files kept open are the removed directory's: a claim appended to one would
        # be seen by no other worker, and a replay within its minute ran.
        for kept, *_ in self._files.values():
            os.close(kept)
        self._files.clear()
        if self._chosen:
            self.directory = default_directory()
        self._open_directory()

    def _open_directory(self) -> None:
        """Make or check the directory (``private_dir``) and hold it open: claims files are
        opened in it by descriptor, never by its path again. Another user may make a
        directory at that path once ours is gone (RemoveIPC empties /dev/shm at a logout),
        and a worker that went on opening its files by path then appended its claims
        there: that user could empty them (a captured call then ran again), or put a FIFO
        in the place of a minute's file (every call of that minute failed). In a removed
        directory nothing can be made (ENOENT), which ``_bucket`` takes as its cue."""
        private_dir(self.directory, fix="remove it: calls are refused until then")
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:  # the one opened: it may have been swapped since private_dir looked
            info = os.fstat(fd)
            if info.st_uid != os.getuid() or info.st_mode & 0o022:
                raise UnsafeDirectory(f"{self.directory} was replaced while it was checked")
        except BaseException:
            os.close(fd)
            raise
        if self._dir >= 0:
            os.close(self._dir)
        self._dir = fd

    def _sweep_legacy(self, now: float) -> None:
        """Remove an older farm's claims directory once every call it recorded has expired
        (never scanned: it may hold millions of links)."""
        name = self.directory.name
        if f"-{NAME}-" not in name:
            return
        legacy = self.directory.with_name(name.replace(f"-{NAME}-", f"-{LEGACY_NAME}-", 1))
        try:
            if now - legacy.lstat().st_mtime <= LEGACY_TTL:
                return
            # One worker wins the rename; it removes the links in a thread of its own, so
            # that no call waits on millions of unlinks.
            gone = legacy.with_name(f"{legacy.name}.gone-{os.getpid()}")
            os.rename(legacy, gone)
        except OSError:
            return
        threading.Thread(
            target=shutil.rmtree, args=(gone,), kwargs={"ignore_errors": True}, daemon=True
        ).start()

    @staticmethod
    def _catch_up(fd: int, read: list[int], seen: dict[bytes, int]) -> None:
        """Take in the claims appended since this worker last read (its own among them);
        the first record of an id is the one kept."""
        while True:
            # 64 KiB: a read usually finds a record or two, and a buffer of 1 MiB was
            # mapped and unmapped on every call.
            data = os.pread(fd, _CHUNK, read[0])
            whole = len(data) - len(data) % _RECORD
            for at in range(0, whole, _RECORD):
                seen.setdefault(data[at : at + 8], int.from_bytes(data[at + 8 : at + 12], "little"))
            read[0] += whole
            if len(data) < _CHUNK:
                return

    def sweep(self, now: float) -> None:
        """Forget claims of expired calls: they would be refused for their age anyway."""
        self._swept = now
        self._sweep_legacy(now)
        current = int(now) // BUCKET
        for bucket in [b for b in self._files if b < current]:
            os.close(self._files.pop(bucket)[0])
        for entry in os.scandir(self._dir):
            name = entry.name
            stamp = name[len("claims-") :] if name.startswith("claims-") else name.partition("-")[0]
            # claims-MINUTE: every call in it expired once the minute is over; EXPIRY-ID: a
            # claim of an older farm, one link per call.
            if not stamp.isdigit():
                continue
            ended = (int(stamp) + 1) * BUCKET if name.startswith("claims-") else int(stamp)
            if ended <= now:
                try:
                    os.unlink(name, dir_fd=self._dir)
                except FileNotFoundError:
                    pass  # another worker swept it first
