"""A Ctrl-C that lands while the caller's thread does the pump's work waits until that
work is whole.

A thread waiting in ``result()`` reads its own replies, and ``submit`` sends its own call
(farm.executor.waithere, farm.executor.pump): they decode results, settle futures and
register what was sent. A KeyboardInterrupt raised half-way through leaves that
bookkeeping half done, which the pump thread can only mend by dropping its connections,
failing every call in flight (farm.executor.waithere), where ProcessPoolExecutor, which
does all of it in its own thread, survives a Ctrl-C untouched. In the main thread, while
Python's own handler is the SIGINT handler, the signal is held for the length of that work
and raised as KeyboardInterrupt right after it; anywhere else (another thread, a handler of
the program's own) nothing changes: the work is cut short, and mended so.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.signal wraps it in enums: 6 µs a call
import signal
import threading
from types import FrameType, TracebackType

__all__ = ["whole"]

_SIGINT = int(signal.SIGINT)
_PYTHONS = signal.default_int_handler
_MAIN = threading.main_thread()


class whole:  # lower case: it reads as a function, `with whole():`
    """Run the block with a Ctrl-C held back until it ends (see the module docstring).

    A Ctrl-C can still be raised on the way in, before the handler is in place (Python
    runs a pending handler as a function starts, and ``signal.signal`` runs it first), and
    on the way out, once Python's is back: the caller's own flag (the pump's
    ``_unfinished``, set and cleared inside the block) says whether work was left half
    done."""

    __slots__ = ("held", "active", "holder")

    def __init__(self) -> None:
        self.held = False  # a Ctrl-C came while the block ran

    def __enter__(self) -> None:
        self.active = threading.current_thread() is _MAIN and _signal.getsignal(_SIGINT) is _PYTHONS
        if self.active:
            self.holder = self._hold  # one bound method: what __exit__ looks for
            _signal.signal(_SIGINT, self.holder)

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.held = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.active:
            return
        if _signal.getsignal(_SIGINT) is self.holder:
            _signal.signal(_SIGINT, _PYTHONS)  # else the block (a done-callback) set its own
        if self.held and kind is None:
            # A plain KeyboardInterrupt, as any other Ctrl-C: a subclass of its own showed
            # its name ("HeldInterrupt:") where a notebook or a traceback shows the Ctrl-C.
            raise KeyboardInterrupt
