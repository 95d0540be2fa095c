"""The pool-wide record of Executor calls already run, so a captured call cannot run twice.

A signed call is valid for anyone who holds its bytes: whoever captured one
could submit it again. Each call carries a fresh id and an expiry (see
``farm.executor.call``); before running one, a worker claims its id here, in a
directory beside the farm's key that every worker of the pool shares (and
that outlives any one of them, so recycling forgets nothing). A claim is one
file created with O_EXCL, holding the job handle: the server's own retry of
the same job (its worker died) carries the same handle and may run; a second
submission of the bytes is a new job with a new handle and is refused. Claims
are named by their expiry, so stale ones are swept by name, without a stat.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from farm.executor.signing import SignatureError, key_path

__all__ = ["ReplayGuard"]

#: How often (seconds) a worker sweeps claims whose calls have expired.
SWEEP_EVERY = 60.0


class ReplayGuard:
    """Claims call ids for this pool; refuses a call that already ran or has expired."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or key_path().with_name("calls-run")
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._swept = 0.0

    def claim(self, call_id: bytes, expires: int, handle: str) -> None:
        """Record that this job runs this call; SignatureError if it may not."""
        now = time.time()
        if now > expires:
            raise SignatureError(f"the call expired {now - expires:.0f}s ago; refused unrun")
        name = self.directory / f"{expires}-{call_id.hex()}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if name.read_text() != handle:
                raise SignatureError(
                    "this call already ran (a replayed payload); refused unrun"
                ) from None
            return  # the server runs the same job again after its worker died
        with os.fdopen(fd, "w") as f:
            f.write(handle)
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
