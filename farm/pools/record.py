"""A slot's shared-memory record: what its worker is doing, without a message per job.

The supervisor must know, for each worker, which job it holds since when (to
kill one that overruns its timeout, and for ``farm ps``), how many jobs it has
done and how large it has grown. Sending that as a message per job put the
supervisor on every job's path (a pipe write, a wake-up and a JSON parse per
job start and end). Instead each worker process gets one small anonymous
shared-memory file (``memfd``), inherited at spawn; the worker writes its
state into it as it goes, and the supervisor reads it on its own tick.

Layout (little endian, 96 bytes)::

    seq u64 | jobs_done u64 | rss u64 | busy_since f64 | handle_len u16 | handle 62 bytes

``seq`` is a sequence lock: the writer makes it odd before a change and even
after, and a reader that sees it odd or changed reads again, so a reader never
takes a torn record. ``busy_since`` is ``time.monotonic()`` (one clock for all
processes of the host), 0.0 when idle.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from typing import NamedTuple

__all__ = ["SIZE", "SlotRecord", "RecordWriter", "RecordReader", "create_record_fd"]

_LAYOUT = struct.Struct("<QQQdH62s")
SIZE = _LAYOUT.size
_SEQ = struct.Struct("<Q")
_MAX_HANDLE = 62


class SlotRecord(NamedTuple):
    """One consistent reading of a record."""

    jobs_done: int
    rss: int
    busy_since: float | None  # None when idle
    handle: str


def create_record_fd(name: str) -> int:
    """A new zeroed record as a memfd; the caller passes it to the child and keeps it."""
    fd = os.memfd_create(f"farm-{name}", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    return fd


class RecordWriter:
    """The worker's side: two cheap writes a job (start, end), no system call."""

    __slots__ = ("_map", "_seq", "jobs_done", "rss")

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SIZE)
        self._seq = 0
        self.jobs_done = 0
        self.rss = 0

    def _write(self, busy_since: float, handle: bytes) -> None:
        seq = self._seq + 1
        _SEQ.pack_into(self._map, 0, seq)  # odd: a change is under way
        _LAYOUT.pack_into(
            self._map, 0, seq, self.jobs_done, self.rss, busy_since, len(handle), handle
        )
        self._seq = seq + 1
        _SEQ.pack_into(self._map, 0, self._seq)

    def started(self, handle: str) -> None:
        raw = handle.encode()[:_MAX_HANDLE]
        self._write(time.monotonic(), raw)

    def ended(self, jobs_done: int, rss: int) -> None:
        self.jobs_done, self.rss = jobs_done, rss
        self._write(0.0, b"")


class RecordReader:
    """The supervisor's side: a consistent snapshot, whenever it looks."""

    __slots__ = ("_map", "_last")

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SIZE, prot=mmap.PROT_READ)
        self._last = SlotRecord(0, 0, None, "")

    def read(self) -> SlotRecord:
        for _ in range(100):
            seq, jobs, rss, since, length, raw = _LAYOUT.unpack_from(self._map, 0)
            if seq % 2 == 0 and _SEQ.unpack_from(self._map, 0)[0] == seq:
                handle = raw[: min(length, _MAX_HANDLE)].decode("utf-8", "replace")
                self._last = SlotRecord(jobs, rss, since or None, handle)
                return self._last
        # A writer stopped mid-change (SIGSTOP): what it said last, rather than spin.
        return self._last

    def close(self) -> None:
        self._map.close()
