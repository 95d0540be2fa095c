"""A job whose answer is lost with its job server: for ``Job.unsent``'s tests, over a Unix
socket, TCP and TLS alike."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

import farm


class HeldJob:
    """The job function ``hold``: it sets ``job.unsent`` (``ran``), says it ``started`` and
    waits for ``release``."""

    def __init__(self) -> None:
        self.started, self.release, self.ran = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )

    def __call__(self, job: Any) -> bytes:
        job.unsent = self.ran.set
        self.started.set()
        assert self.release.wait(30)
        return b"done"

    def answered_then_lost(self, client: farm.Client, server: subprocess.Popen[bytes]) -> None:
        """One job answered (its hook not run), then one whose ``server`` is killed and
        reaped (its sockets closed, its end of stream on the worker's socket) while it
        runs, released after: the worker's answer then finds no server."""
        self.release.set()
        assert client.call("hold", b"answered", timeout=30) == b"done"
        assert not self.ran.is_set()  # its answer left: nothing to clean up
        self.started.clear()
        self.release.clear()
        client.submit("hold", b"lost", background=True)
        assert self.started.wait(30)
        server.kill()
        server.wait()
        self.release.set()
