"""A signal handler run in the main thread once a call is under way (``signal_once``).

SIGUSR1, sent to the main thread by a helper thread. Not SIGALRM: pytest-timeout's method
here is ``signal`` (SIGALRM and ITIMER_REAL), which a test's own handler and timer would
replace, so a hang hung the run."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

Handler = Callable[[int, Any], None]


@contextlib.contextmanager
def signal_once(ready: threading.Event, handler: Handler) -> Iterator[threading.Event]:
    """Run ``handler`` in the main thread (a signal handler) once ``ready`` is set; the event
    yielded is set when it has run. The previous SIGUSR1 handler is back on the way out."""
    ran, sent, lock = threading.Event(), threading.Event(), threading.Lock()
    finished = False

    def run(signum: int, frame: Any) -> None:
        try:
            handler(signum, frame)
        finally:
            ran.set()

    def send() -> None:
        if ready.wait(20):
            with lock:
                if not finished:
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
                    sent.set()

    previous = signal.signal(signal.SIGUSR1, run)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield ran
    finally:
        with lock:
            finished = True
        # A signal sent is handled before the default (which ends the process) is back:
        # its handler runs in this thread, inside the wait (a lock's wait lets it in).
        if sent.is_set():
            ran.wait(10)
        signal.signal(signal.SIGUSR1, previous)
