"""Call ids: the fresh random bytes that bind a job's results to its call and stop replays
(farm.executor.flight gives each job one; farm.executor.replay remembers them)."""

from __future__ import annotations

import os
import threading

from farm.executor.payload import CALL_ID_SIZE

__all__ = ["ID_POOL", "new_call_id"]

#: Random bytes read at once for call ids: 256 ids a system call.
ID_POOL = 256 * CALL_ID_SIZE


class _CallIds:
    """Fresh call ids cut from one read of the system's random source. A call paid a
    getrandom() of 16 bytes each (and two Python frames of secrets/random); ids from the
    same source, read 4 KiB at a time, are as unpredictable. A forked child starts on a
    fresh read: the ids left in the parent's would otherwise be used twice, and the pool's
    replay guard refuses the second call with an id it saw ("already ran")."""

    __slots__ = ("_pool", "_at", "_lock")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._lock = threading.Lock()  # a Flight is made under the pump's lock; not map's

    def take(self) -> bytes:
        with self._lock:
            at = self._at
            if at + CALL_ID_SIZE > len(self._pool):
                self._pool, at = os.urandom(ID_POOL), 0
            self._at = at + CALL_ID_SIZE
            return self._pool[at : at + CALL_ID_SIZE]

    def forget(self) -> None:
        """In a forked child: none of the parent's ids (and a lock no thread holds)."""
        self._pool, self._at, self._lock = b"", 0, threading.Lock()


_call_ids = _CallIds()
os.register_at_fork(after_in_child=_call_ids.forget)


def new_call_id() -> bytes:
    """CALL_ID_SIZE random bytes, never handed out before in this process or its parent."""
    return _call_ids.take()
