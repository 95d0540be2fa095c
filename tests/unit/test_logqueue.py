"""farm.logqueue: lines queue while the reader takes none, in order; past the limit they
are dropped and a warning counts them once the reader takes lines again."""

from __future__ import annotations

import io
import logging
import os
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
    for n in range(30):  # 30 lines of 7 bytes: the first 14 fit in 100, the rest do not
        stream.write(f"line{n:02d}\n")
    with caplog.at_level(logging.WARNING, logger="farm.logs"):
        stalled.go.set()
        assert stream.drain(10)
        stream.write("after\n")
        assert stream.drain(10)
    text = stalled.getvalue().splitlines()
    assert text[:16] == ["first", *(f"line{n:02d}" for n in range(14)), "after"], text
    assert "16 log line(s) were dropped" in caplog.text, caplog.text


def test_a_regular_file_is_written_as_it_is(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as file:
        assert unblocked(file) is file
    read, write = os.pipe()
    with os.fdopen(read), os.fdopen(write, "w") as pipe:
        assert isinstance(unblocked(pipe), UnblockedStream)
