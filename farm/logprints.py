"""What a Python worker's jobs print, as log records: ``capture_prints`` makes the
process's ``sys.stdout`` and ``sys.stderr`` streams whose lines go to a logger (farm.logs
formats them, text or JSON, with the worker's slot and function)."""

from __future__ import annotations

import codecs
import io
import logging
import sys
import threading
from typing import IO, Any

__all__ = ["LogLines", "capture_prints"]


class LogLines(io.TextIOBase):
    """A text stream whose lines become log records: a Python worker's ``sys.stdout`` and
    ``sys.stderr``, so what its jobs print is tagged with its pool and slot, and is JSON
    with ``--log-format json`` (raw lines broke ``journalctl -o cat | jq``). ``buffer``
    takes bytes (decoded as UTF-8); ``fileno()`` and anything else a stream has are the
    real stream's, for code that writes to the descriptor itself."""

    def __init__(self, logger: logging.Logger, level: int, real: IO[str]) -> None:
        super().__init__()
        self.logger = logger
        self.level = level
        self.real = real
        self.buffer = _BytesLines(self)
        self._part = ""
        # Threads print at once: each line whole, in order. Reentrant, as logging's own
        # locks: a signal handler that prints inside a print must not deadlock the worker.
        self._lock = threading.RLock()
        # logging reports its own errors on stderr: those go to the real stream, not here.
        self._local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        return "utf-8"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.real.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def write(self, text: str) -> int:
        if getattr(self._local, "inside", False):
            return self.real.write(text)
        with self._lock:
            lines = (self._part + text).split("\n")
            self._part = lines.pop()
        self._emit(lines)
        return len(text)

    def flush(self) -> None:
        with self._lock:  # print(..., end="", flush=True): say it now
            line, self._part = self._part, ""
        if line and not getattr(self._local, "inside", False):
            self._emit([line])

    def _emit(self, lines: list[str]) -> None:
        self._local.inside = True
        try:
            for line in lines:
                self.logger.log(self.level, "%s", line)
        finally:
            self._local.inside = False


class _BytesLines(io.RawIOBase):
    """``LogLines.buffer``: bytes written to it are its lines too. Decoded as a stream:
    output copied in chunks (shutil.copyfileobj, a child's pipe) is cut anywhere, and a
    character cut in two, decoded a half at a time, was logged as two U+FFFD."""

    def __init__(self, text: LogLines) -> None:
        super().__init__()
        self.text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # One decoder's state: one write at a time (reentrant, as LogLines' lock).
        self._lock = threading.RLock()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with self._lock:  # decoded and passed on in the order written
            self.text.write(self._decoder.decode(bytes(data)))
        return len(data)

    def flush(self) -> None:
        self.text.flush()


def capture_prints(logger: logging.Logger) -> None:
    """Route this process's ``print()`` (INFO) and stderr (WARNING) through ``logger``."""
    sys.stdout = LogLines(logger, logging.INFO, sys.stdout)
    sys.stderr = LogLines(logger, logging.WARNING, sys.stderr)
