"""farm.logqueue: lines queue while the reader takes none, in order; past the limit they
are dropped and a warning counts them once the reader takes lines again."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from farm.logqueue import UnblockedStream, unblocked


class Stalled(io.StringIO):
    """A reader that takes nothing until let go."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.go.wait(10)
        return super().write(text)


def test_lines_wait_in_order_and_the_dropped_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    stalled = Stalled()
    stream = UnblockedStream(stalled, limit=100)
    stream.write("first\n")
    assert stalled.entered.wait(10)  # the writer waits on the reader; write() did not
    # 30 lines of 7 characters: 13 fit in 100 beside the 6 being written, the rest do not
    # (those were not counted once taken, so twice the limit could wait)
    for n in range(30):
        stream.write(f"line{n:02d}\n")
    with caplog.at_level(logging.WARNING, logger="farm.logs"):
        stalled.go.set()
        assert stream.drain(10)
        stream.write("after\n")
        assert stream.drain(10)
    text = stalled.getvalue().splitlines()
    assert text == ["first", *(f"line{n:02d}" for n in range(13)), "after"], text
    assert "17 log line(s) were dropped" in caplog.text, caplog.text


def test_a_regular_file_is_written_as_it_is(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as file:
        assert unblocked(file) is file
    read, write = os.pipe()
    with os.fdopen(read), os.fdopen(write, "w") as pipe:
        assert isinstance(unblocked(pipe), UnblockedStream)


def test_lines_the_reader_keeps_up_with_are_out_before_a_sudden_exit() -> None:
    # Written in place while the pipe has room: queued for the thread, the 50 lines before
    # an os._exit (a SIGKILL, an abort, a forked child's exec failure) were all lost.
    code = (
        "import os, sys\n"
        "from farm.logqueue import UnblockedStream\n"
        "stream = UnblockedStream(sys.stderr)\n"
        "for n in range(50):\n"
        "    stream.write(f'line {n}\\n')\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, timeout=30
    )
    assert done.stderr.splitlines() == [f"line {n}" for n in range(50)]
