"""A log stream whose writes never wait on its reader: the supervisor's and the server's.

Their stderr is a pipe in a container (``docker logs``' driver reads it) and often
elsewhere (``farm up | tee``). A reader that stops taking lines (a blocking log driver whose
remote end is down, a paused pager) filled the pipe's 64 KiB, and the next log line's write
waited for it: in the supervisor, with everything else the loop does, so a worker's
relayed output, ``farm ps``, a restart and even SIGTERM's stop waited too (the farm hung
until ``docker stop``'s SIGKILL); in the server, every job. So such a stream's lines go
to a queue that a thread of their own writes out, in order, whatever time the reader takes;
past ``LIMIT`` bytes waiting, lines are dropped and counted, and a warning says how many
once the reader takes lines again. A regular file is written as before: it does not block.
"""

from __future__ import annotations

import atexit
import logging
import os
import stat
import threading
import time
from collections import deque
from typing import IO

__all__ = ["LIMIT", "UnblockedStream", "unblocked"]

#: Bytes of log lines held for a reader that does not read, past which lines are dropped.
LIMIT = 1 << 20
#: Seconds a process's exit waits for its last lines to be taken.
EXIT_WAIT = 2.0

log = logging.getLogger("farm.logs")


class UnblockedStream:
    """``write`` queues the text and returns; a daemon thread writes it to ``stream``."""

    def __init__(self, stream: IO[str], limit: int = LIMIT) -> None:
        self.stream = stream
        self.limit = limit
        self._ready = threading.Condition()
        self._pending: deque[str] = deque()
        self._held = 0  # bytes in _pending
        self._dropped = 0  # lines dropped since the last warning
        self._writing = False
        self._thread: threading.Thread | None = None
        self._start()
        # A fork's child has no writer thread: it starts its own at its first write.
        os.register_at_fork(after_in_child=self._forked)
        atexit.register(self.drain, EXIT_WAIT)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="farm-log-writer", daemon=True)
        self._thread.start()

    def _forked(self) -> None:
        # The lines queued at the fork are the parent's to write, not this child's too.
        self._ready = threading.Condition()
        self._pending.clear()
        self._held = self._dropped = 0
        self._writing = False
        self._thread = None

    def write(self, text: str) -> int:
        with self._ready:
            if self._thread is None:
                self._start()
            if self._held + len(text) > self.limit:
                self._dropped += text.count("\n") or 1
            else:
                self._pending.append(text)
                self._held += len(text)
                self._ready.notify()
        return len(text)

    def flush(self) -> None:
        """Nothing to wait for: the writer flushes what it writes (``drain`` waits)."""

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued line to be written."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._pending or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._ready.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                text = "".join(self._pending)
                self._pending.clear()
                self._held = 0
                dropped, self._dropped = self._dropped, 0
                self._writing = True
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # a reader gone (EPIPE) or a closed stream
                pass
            with self._ready:
                self._writing = False
                self._ready.notify_all()
            if dropped:  # as a record of its own, in this log's format
                log.warning(
                    "%d log line(s) were dropped: the log's reader took none of %d bytes"
                    " waiting for it (a log driver that blocks, a pipe nobody reads)",
                    dropped,
                    self.limit,
                )


def unblocked(stream: IO[str]) -> IO[str]:
    """``stream`` wrapped in an UnblockedStream where a write may wait on a reader (a pipe,
    a socket such as the journal's, a terminal); a regular file as it is."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return stream  # no descriptor (a test's StringIO): writes that cannot block
    if stat.S_ISREG(mode):
        return stream
    return UnblockedStream(stream)  # type: ignore[return-value]
