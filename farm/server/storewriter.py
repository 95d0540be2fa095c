"""The store's commits in a thread of the server's own, one at a time.

A commit ran in the event loop, so a flood of background jobs from any local user over
TCP stalled the loop for as long as SQLite wrote (tens of milliseconds a batch, more for
a checkpoint), delaying everyone's replies, the Executor's on the Unix socket included.
SQLite lets go of the GIL while it steps, so the write runs beside the loop here:

    loop thread:    stage ─ take ─┐              ┌─ settle, release held replies ─ take …
    writer thread:                └─ write (SQL) ┘

One batch is in flight at a time; the loop stages the next meanwhile. While a batch is in
flight the SQLite connection is the writer's alone (``take`` and ``settle`` touch only the
stage), so it is used by one thread at a time. Other work on the connection (the admin
``backup``'s copy: ``run``) goes to the same thread, in turn with the batches, so it too
leaves the loop free and sees every batch written before it. Without a running loop
(connections driven by hand in tests) a batch is written at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from farm.server.store import Batch, SQLiteStore

__all__ = ["StoreWriter"]

log = logging.getLogger("farm.server")
T = TypeVar("T")


class StoreWriter:
    """Writes ``store``'s batches one at a time; ``done`` takes each back on the loop."""

    def __init__(self, store: SQLiteStore, done: Callable[[Batch], None]) -> None:
        self.store = store
        self.done = done
        self.batch: Batch | None = None  # the batch in flight
        self._future: Future[None] | None = None
        self.task: Future[object] | None = None  # the last work given to ``run``
        # Started at the first commit, after a daemon's fork (-d): no thread crosses it.
        self._pool: ThreadPoolExecutor | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None, *, look: bool = False) -> None:
        """Take the stage and write it: in the writer thread under a loop, else here. With
        ``look``, the stage empty, a batch that only looks at the store's path (take_look)."""
        assert self.batch is None, "one commit at a time"
        batch = self.store.take_look() if look else self.store.take()
        if loop is None:
            self._write(batch)
            self.done(batch)
            return
        self.batch = batch
        self._future = self._thread().submit(self._write, batch)
        self._future.add_done_callback(lambda _: _call_soon(loop, self._finish, batch))

    def run(self, task: Callable[[], T]) -> Future[T]:
        """Do ``task`` (which uses the store's connection) in the writer thread, after the
        batch in flight and before any begun later: its future."""
        future = self._thread().submit(task)
        self.task = future  # type: ignore[assignment]  # only waited on
        return future

    def _thread(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="farm-store")
        return self._pool

    def _write(self, batch: Batch) -> None:
        try:
            self.store.write(batch)
        except Exception as exc:  # a bug, or an OSError of the reserve: refused, not lost
            log.exception("the job store %s: commit failed", self.store.path)
            batch.error = f"{type(exc).__name__}: {exc}"

    def _finish(self, batch: Batch) -> None:
        if self.batch is not batch:  # already taken back by wait()
            return
        self.batch = self._future = None
        self.done(batch)

    def wait(self) -> None:
        """Block until the batch in flight is written, and take it back (shutdown); and
        until the work given to ``run`` is done, which may be later (the connection is
        then the caller's)."""
        if self.task is not None:
            self.task.exception()  # its outcome is its asker's
            self.task = None
        batch, future = self.batch, self._future
        if batch is not None and future is not None:
            began = time.monotonic()
            future.result()
            log.debug("waited %.3f s for the store's last commit", time.monotonic() - began)
            self._finish(batch)

    def close(self) -> None:
        """Wait for the batch in flight, then end the writer thread."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[[Batch], None], batch: Batch
) -> None:
    try:
        loop.call_soon_threadsafe(callback, batch)
    except RuntimeError:  # the loop is closed: close_store() takes the batch back itself
        pass
