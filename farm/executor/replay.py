"""The pool-wide record of Executor calls already run, so a captured call cannot run twice.

A signed call is valid for anyone who holds its bytes: whoever captured one
could submit it again. Each call carries a fresh id and an expiry (see
``farm.executor.payload``); before running one, a worker claims its id here, in a
directory named for the farm's key that every worker of the pool shares (and
that outlives any one of them, so recycling forgets nothing). A claim is one
symbolic link whose target is the job handle (made atomically in one system
call, failing when it exists): the server's own retry of the same job (its
worker died) carries the same handle and may run; a second
submission of the bytes is a new job with a new handle and is refused. Claims
are named by their expiry, so stale ones are swept by name, without a stat.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from farm.executor.signing import SignatureError, key_path
from farm.paths import UnsafeDirectory, private_dir

log = logging.getLogger("farm.executor")

__all__ = ["ReplayGuard"]

#: How often (seconds) a worker sweeps claims whose calls have expired.
SWEEP_EVERY = 60.0


def default_directory() -> Path:
    """Where the pool keeps its claims: in shared memory (a claim on a disk's file system
    cost ~0.8 ms here, in tmpfs ~7 µs), in a directory private to this user and named for
    the farm's key; beside the key file when shared memory is missing or not safe."""
    key = key_path()
    digest = hashlib.sha256(str(key.resolve()).encode()).hexdigest()[:12]
    shm = Path("/dev/shm")
    if shm.is_dir():
        try:
            return private_dir(shm / f"farm-{os.getuid()}-calls-{digest}")
        except (UnsafeDirectory, OSError) as exc:
            log.warning("replay record not in %s (%s); using the key's directory", shm, exc)
    return key.with_name("calls-run")


class ReplayGuard:
    """Claims call ids for this pool; refuses a call that already ran or has expired."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_directory()
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._swept = 0.0

    def claim(self, call_id: bytes, expires: int, handle: str) -> None:
        """Record that this job runs this call; SignatureError if it may not."""
        now = time.time()
        if now > expires:
            raise SignatureError(f"the call expired {now - expires:.0f}s ago; refused unrun")
        name = self.directory / f"{expires}-{call_id.hex()}"
        try:
            os.symlink(handle, name)  # one system call, atomic, fails if claimed
        except FileExistsError:
            if os.readlink(name) != handle:
                raise SignatureError(
                    "this call already ran (a replayed payload); refused unrun"
                ) from None
            return  # the server runs the same job again after its worker died
        if now - self._swept > SWEEP_EVERY:
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Forget claims of expired calls: they would be refused for their age anyway."""
        self._swept = now
        for entry in os.scandir(self.directory):
            expires, _, _ = entry.name.partition("-")
            if expires.isdigit() and int(expires) < now:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass  # another worker swept it first
