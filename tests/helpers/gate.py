"""A gate a worker process waits at until the test opens it (an Event across processes).

The test listens on a Unix socket; ``tests.helpers.calls.wait_gate(path)`` connects
and blocks in recv. ``open()`` closes the listener: every waiting worker's recv
returns (reset), and a later ``wait_gate`` is refused and returns at once.
CPython's tests use a Manager's Event here; its proxy cannot authenticate from
farm workers, which were not started by the test.
"""

from __future__ import annotations

import socket
from pathlib import Path


class Gate:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX)
        self._sock.bind(self.path)
        self._sock.listen(128)

    def open(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()
