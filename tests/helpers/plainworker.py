"""A program of its own around farm.Worker, as a user writes one:
``python -m tests.helpers.plainworker SERVER HOW``. Its functions: ``hold``,
``tests.helpers.crashy:hold`` (the job's data a folder DIR: DIR/started-PID, then it waits
for DIR/go), and ``leave``, ``tests.helpers.crashy:leave`` (``sys.exit(N)``, N its data).
``HOW`` is what its SIGTERM does: "stop", a handler that calls ``Worker.stop()``; the
others a handler of the program's own that calls ``sys.exit(0)``, in each shape a program
writes one (``HANDLERS``); SIGINT is Python's own (KeyboardInterrupt)."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import farm
from tests.helpers.crashy import hold, leave


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def _quiet(signum: int, frame: FrameType | None) -> None:
    del frame  # unused, as inspect's docs advise
    sys.exit(0)


def _once(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM kills at once: the handler is gone before it exits.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(0)


def _exit_with(code: int, signum: int, frame: FrameType | None) -> None:
    sys.exit(code)


def _shut_down() -> None:
    sys.exit(0)  # a frame below the handler's raises


class _Stopper:
    def __call__(self, signum: int, frame: FrameType | None) -> None:
        sys.exit(0)


#: A SIGTERM handler that calls ``sys.exit(0)``, by the shape it has.
HANDLERS: dict[str, Callable[[int, Any], None]] = {
    "exit": lambda *_: sys.exit(0),
    "function": _exit,
    "del-frame": _quiet,
    "reset": _once,
    "partial": functools.partial(_exit_with, 0),
    "object": _Stopper(),
    "nested": lambda *_: _shut_down(),
}


def main() -> None:
    server, how = sys.argv[1], sys.argv[2]
    worker = farm.Worker(server)
    worker.register("hold", hold)
    worker.register("leave", leave)
    if how == "stop":
        signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    else:
        signal.signal(signal.SIGTERM, HANDLERS[how])
    worker.work()


if __name__ == "__main__":
    main()
