"""A self-pipe that wakes a selector loop from another thread or a signal handler: the
worker's, the Executor's pump and caller, and the supervisor's loops."""

from __future__ import annotations

import socket
import threading

__all__ = ["Waker"]


class Waker:
    """A self-pipe: another thread (or a signal handler) wakes a selector loop.

    Register ``reader`` for reading; ``wake()`` never blocks (a full buffer
    means a wake-up is already pending); the loop calls ``drain()`` when woken.
    """

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # already full (a wake-up is pending) or closed

    def wake_on_signals(self) -> None:
        """Make every signal the process receives wake the loop (``signal.set_wakeup_fd``):
        the handlers then only record the signal, and the loop does the work."""
        import signal

        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def claim_signals(self) -> bool:
        """``wake_on_signals`` for a loop in the main thread, if nothing else (asyncio, an
        outer loop) holds the wake-up fd; True if it was taken, for ``release_signals``.

        Without it a signal that arrives after the loop's last check and before its select
        sleeps has its Python handler run only once the select returns for another reason.
        """
        import signal

        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's: leave it theirs
            signal.set_wakeup_fd(previous)
            return False
        return True

    def release_signals(self) -> None:
        """Give back what ``claim_signals`` took; a wake-up fd someone else set since stays."""
        import signal

        current = signal.set_wakeup_fd(-1)
        if current != self._writer.fileno():  # replaced meanwhile (a job's own event loop)
            signal.set_wakeup_fd(current)

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()
