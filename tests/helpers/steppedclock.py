"""A job server whose wall clock a test steps, as NTP does (or a resume from suspend, for
a clock whose monotonic count stood still): ``time.time`` moved by the seconds written in a
file, read at each call; ``time.monotonic``, and so asyncio's timers, left alone.

Run as ``python -m tests.helpers.steppedclock OFFSET_FILE SERVER_FLAGS...``; tests start it
with ``stepped_server`` and move its clock with ``step``. libfaketime does the same to any
program, but is not on every machine the tests run on."""

from __future__ import annotations

import runpy
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.servers import Server, _launch


@dataclass
class SteppedServer:
    """A farm server and the file of its clock's offset."""

    server: Server
    offset_file: Path

    def step(self, seconds: float) -> None:
        """Move the server's wall clock by ``seconds`` more (back, where negative)."""
        now = float(self.offset_file.read_text())
        staged = self.offset_file.with_suffix(".new")
        staged.write_text(f"{now + seconds}\n")
        staged.replace(self.offset_file)  # whole: the server never reads it half written


@contextmanager
def stepped_server(tmp: Path, *flags: str) -> Iterator[SteppedServer]:
    """`python -m farm.server --store none` plus ``flags``, on 127.0.0.1, its clock steppable."""
    offset_file = tmp / "clock-offset"
    offset_file.write_text("0\n")

    def cmd(port: int) -> list[str]:
        runner = [sys.executable, "-m", "tests.helpers.steppedclock", str(offset_file)]
        return [*runner, "--port", str(port), "--store", "none", *flags]

    proc, port = _launch("farm server (stepped clock)", cmd, None, cwd=ROOT)
    server = Server("farm", f"127.0.0.1:{port}", proc, port, None, list(flags))
    try:
        yield SteppedServer(server, offset_file)
    finally:
        server.stop()


def _run_server(offset_file: str, flags: list[str]) -> None:
    real_time, real_ns = time.time, time.time_ns

    def offset() -> float:
        try:
            return float(Path(offset_file).read_text())
        except (OSError, ValueError):  # gone with the test's directory as the server ends
            return 0.0

    time.time = lambda: real_time() + offset()
    time.time_ns = lambda: real_ns() + int(offset() * 1e9)
    sys.argv = ["farm.server", *flags]
    runpy.run_module("farm.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _run_server(sys.argv[1], sys.argv[2:])
