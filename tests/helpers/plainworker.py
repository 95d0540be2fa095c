"""A program of its own around farm.Worker, as a user writes one:
``python -m tests.helpers.plainworker SERVER HOW``. Its one function, ``hold``, is
``tests.helpers.crashy:hold`` (the job's data a folder DIR: DIR/started-PID, then it waits
for DIR/go). ``HOW`` is what its
SIGTERM does: "exit", a handler of its own that calls ``sys.exit(0)``; "stop", one that
calls ``Worker.stop()``; SIGINT is Python's own (KeyboardInterrupt)."""

from __future__ import annotations

import signal
import sys

import farm
from tests.helpers.crashy import hold


def main() -> None:
    server, how = sys.argv[1], sys.argv[2]
    worker = farm.Worker(server)
    worker.register("hold", hold)
    if how == "exit":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    else:
        signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.work()


if __name__ == "__main__":
    main()
