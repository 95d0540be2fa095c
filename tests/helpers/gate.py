"""A gate a worker process waits at until the test opens it (an Event across processes).

The test listens on a Unix socket; ``tests.helpers.calls.wait_gate(path)`` connects
and blocks in recv. ``open()`` closes the listener: every waiting worker's recv
returns (reset), and a later ``wait_gate`` is refused and returns at once.
CPython's tests use a Manager's Event here; its proxy cannot authenticate from
farm workers, which were not started by the test. ``arrived(n)`` waits until ``n`` calls
wait at the gate (it accepts their connections, which ``open()`` closes too).
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.waiting import wait_for

#: A target whose import waits for a file the test makes: the worker's boot, held.
GATED = """
import os, time
_gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")
_until = time.monotonic() + 60
while not os.path.exists(_gate) and time.monotonic() < _until:
    time.sleep(0.01)

def job(j):
    return b"ok"
"""


class Gate:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX)
        self._sock.bind(self.path)
        self._sock.listen(128)
        self._waiting: list[socket.socket] = []

    def arrived(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` calls in all wait at the gate (socket.timeout past ``timeout``)."""
        assert self._sock is not None, "the gate is open: nobody waits at it"
        self._sock.settimeout(timeout)
        while len(self._waiting) < n:
            self._waiting.append(self._sock.accept()[0])

    def open(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for sock in self._waiting:
            sock.close()  # that call's recv returns b"": the gate is open
        self._waiting.clear()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()


def second_worker_booting(
    tmp_path: Path, boot_timeout: float, *, own_group: bool = False
) -> tuple[FarmUp, Path]:
    """`farm up` with a pool of ``GATED`` scaled to 2 and its second worker held loading
    its target (the gate file gone); the farm and the gate file, which lets it go on.
    ``own_group``: FarmUp's (a terminal's job, for Ctrl-Z)."""
    (tmp_path / "gated.py").write_text(GATED)
    gate = tmp_path / "gate"
    gate.touch()
    up = FarmUp(
        tmp_path,
        '[functions.gated]\ntarget = "gated:job"\nworkers = 1\n',
        supervisor=f"boot_timeout = {boot_timeout:g}",
        own_group=own_group,
    )
    try:
        up.expect_notify("READY=1")
        gate.unlink()
        assert farm_cli("scale", "gated=2", "--control", up.control).returncode == 0
        wait_for("the second worker's start", lambda: len(up.workers("gated")) == 2)
    except BaseException:
        up.stop()
        raise
    return up, gate
