"""A slot's shared-memory record: what its worker is doing, without a message per job.

The supervisor must know, for each worker, which job it holds since when (to
kill one that overruns its timeout, and for ``farm ps``), how many jobs it has
done and how large it has grown. Sending that as a message per job put the
supervisor on every job's path (a pipe write, a wake-up and a JSON parse per
job start and end). Instead each worker process gets one small anonymous
shared-memory file (``memfd``), inherited at spawn; the worker writes its
state into it as it goes, and the supervisor reads it on its own tick.

Layout (little endian, 96 bytes)::

    seq u64 | jobs_done u64 | rss u64 | busy_since f64 | handle_len u16 | handle 61 | server u8

``seq`` is a sequence lock: the writer makes it odd before a change and even
after, and a reader that sees it odd or changed reads again, so a reader never
takes a torn record. ``busy_since`` is ``time.monotonic()`` (one clock for all
processes of the host), 0.0 when idle. ``server`` is the place of the job's server in
the worker's ``--server`` list, from 1 (0: not said): a job from the supervisor's own
server, which is the first, may be from one that has died since (``farm ps``). It took the
last byte of what was a 62-byte handle, so a supervisor of the older layout (one a worker of
a newer farm installed meanwhile reports to) still reads the handle, cut by its length.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from typing import NamedTuple

from farm.pools.spawn import exec_text

__all__ = ["SIZE", "SlotRecord", "RecordWriter", "RecordReader", "create_record_fd"]

_LAYOUT = struct.Struct("<QQQdH61sB")
SIZE = _LAYOUT.size
_SEQ = struct.Struct("<Q")
_MAX_HANDLE = 61


class SlotRecord(NamedTuple):
    """One consistent reading of a record."""

    jobs_done: int
    rss: int
    busy_since: float | None  # None when idle
    handle: str
    server: int = 0  # where the job came from: its server's place in the worker's list, from 1


def create_record_fd(name: str) -> int:
    """A new zeroed record as a memfd; the caller passes it to the child and keeps it."""
    # Its label (/proc/PID/fd) encoded as exec's arguments: 中文#0 under ISO-8859-1 raised.
    fd = os.memfd_create(exec_text(f"farm-{name}"), os.MFD_CLOEXEC)
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

    def _write(self, busy_since: float, handle: bytes, server: int = 0) -> None:
        seq = self._seq + 1
        _SEQ.pack_into(self._map, 0, seq)  # odd: a change is under way
        _LAYOUT.pack_into(
            self._map, 0, seq, self.jobs_done, self.rss, busy_since, len(handle), handle, server
        )
        self._seq = seq + 1
        _SEQ.pack_into(self._map, 0, self._seq)

    def started(self, handle: str, server: int = 0) -> None:
        """A job began: its handle, and its server's place in the worker's list (from 1)."""
        raw = handle.encode("utf-8", "surrogateescape")[:_MAX_HANDLE]  # as the worker got it
        self._write(time.monotonic(), raw, server if 0 <= server <= 255 else 0)

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
            seq, jobs, rss, since, length, raw, server = _LAYOUT.unpack_from(self._map, 0)
            if seq % 2 == 0 and _SEQ.unpack_from(self._map, 0)[0] == seq:
                handle = raw[: min(length, _MAX_HANDLE)].decode("utf-8", "replace")
                self._last = SlotRecord(jobs, rss, since or None, handle, server if since else 0)
                return self._last
        # A writer stopped mid-change (SIGSTOP): what it said last, rather than spin.
        return self._last

    def close(self) -> None:
        self._map.close()
