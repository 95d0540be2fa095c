"""The keys of `farm top`'s terminal: read one at a time in cbreak mode while the view
waits between frames, the terminal's mode restored on the way out; a resize wakes the wait."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Keys", "no_keys", "terminal_keys"]


class Keys:
    """Key presses from the terminal, one at a time, while the view waits; a resize
    (SIGWINCH) ends the wait early so the next frame fits at once."""

    def __init__(self) -> None:
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.old_winch = signal.signal(signal.SIGWINCH, self._resized)

    def _resized(self, signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"r")  # only wakes the wait; the loop redraws

    def wait(self, timeout: float) -> str:
        """The key pressed within ``timeout`` seconds ('' for none or a resize)."""
        ready, _, _ = select.select([self.fd, self.wake_r], [], [], timeout)
        if self.wake_r in ready:
            os.read(self.wake_r, 64)
        if self.fd in ready:
            return os.read(self.fd, 16).decode(errors="replace")[:1]
        return ""

    def close(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        signal.signal(signal.SIGWINCH, self.old_winch)
        os.close(self.wake_r)
        os.close(self.wake_w)


@contextlib.contextmanager
def terminal_keys(interactive: bool) -> Iterator[Keys | None]:
    """The terminal's keys while the view runs (None without a terminal), its mode restored
    after."""
    keys = Keys() if interactive else None
    try:
        yield keys
    finally:
        if keys is not None:
            keys.close()


def no_keys(seconds: float) -> str:
    time.sleep(seconds)  # no terminal to read keys from: only the clock
    return ""
