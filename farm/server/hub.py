"""What every connection of one server shares: the job model, the store, the write batch.

``Hub`` sits below the connections and the admin commands (they only see
this), and ``Server`` (farm/server/app.py) owns one beside its listeners and
signals — so app, connection and admin do not import each other in a circle.

Writes are batched: a connection that has something to send puts itself on
``dirty`` once, and ``flush`` writes each one once. A read asks for the flush
with ``flush_soon``, which runs it once after every read the loop has ready in
this turn: a client whose jobs two workers finished in the same turn gets one
write, not two (a write is a system call, the largest cost per job here).
Background jobs staged in the store are committed in a thread of the server's
own (farm.server.storewriter), one batch at a time, so a flood of them does not
stall the loop. A connection holds the JOB_CREATED of such a job (and all that
it sends after it) until the batch with its row is committed, so no client
learns a handle for a job that is not on disk, and a failed commit turns into
QUEUE_ERROR in place; the job is queued for workers only then (JobServer.committed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol

from farm.server.deadlines import Deadlines
from farm.server.endedpeers import EndedPeers
from farm.server.jobs import Job, JobServer
from farm.server.metrics import ServerStats
from farm.server.queues import INERT_TIMER, Timer
from farm.server.settings import ServerOptions
from farm.server.store import Batch, SQLiteStore, open_store
from farm.server.storewriter import StoreWriter

log = logging.getLogger("farm.server")

__all__ = [
    "Hub",
    "HeldReply",
    "Writer",
    "VERBOSE_NAMES",
    "LAZY_CREATED_MAX",
    "HELD_READ_LIMIT",
    "STORE_LOOK_EVERY",
]

#: What the admin ``verbose`` answers, by -v's count: the level the server logs at
#: (settings.log_level), in gearmand's words; at none, gearmand's own default, ERROR (farm
#: logs warnings too, and reads --verbose ERROR and WARNING alike).
VERBOSE_NAMES = ("ERROR", "INFO", "DEBUG")

#: A JOB_CREATED held for a lazy-created client leaves at the latest this late (seconds).
LAZY_CREATED_MAX = 0.005
#: Seconds between the looks at the store's path while it holds jobs and no commit looked
#: (a busy server's commits look, and no look of its own is made then):
#: a store deleted under an idle server was made again only at its next commit or its stop,
#: and a kill -9 before either lost every job in it.
STORE_LOOK_EVERY = 1.0
#: Bytes of replies a connection may hold behind a JOB_CREATED waiting for the store's commit
#: before it is not read until they leave: held, they reach no transport, so neither its
#: high-water mark nor --max-unread-bytes would stop a peer piping requests behind a
#: background submit while a commit is slow (farm.server.backpressure).
HELD_READ_LIMIT = 1 << 20


class HeldReply:
    """A background submit's JOB_CREATED held until the batch with its row is committed,
    and what the connection sent after it."""

    __slots__ = ("handle", "priority", "row", "after", "refusal", "starts")

    def __init__(self, handle: bytes, priority: int, row: int) -> None:
        self.handle = handle
        self.priority = priority  # the submit's, for the count of refusals
        self.row = row
        self.after = bytearray()
        # Set once its batch failed (a QUEUE_ERROR's text), while it waits behind a reply
        # of a later batch: a submit joining an older job may follow a newer one.
        self.refusal: str | None = None
        # Deadlines of what was sent after it, started once it leaves (ClientSide.when_sent).
        self.starts: list[Callable[[], None]] | None = None


class Writer(Protocol):
    """A connection as the hub and the admin commands see it."""

    fd: int
    ip: str
    client_id: bytes
    abilities: dict[bytes, float]
    # farm's admin `peers`, `drain`, `killing` (docs/server.md): who is at the other end,
    # what it did.
    peer_pid: int  # Unix-socket peers (SO_PEERCRED); 0 on TCP
    peer_port: int  # TCP peers' remote port; 0 on a Unix socket
    peer_uid: int | None  # Unix-socket peers' user (SO_PEERCRED); None on TCP
    opened: float  # when it was accepted (monotonic): admin `claim` takes no older one
    jobs_done: int
    draining: bool
    awaits_jobs: bool  # it asked for a job since it last registered a new function
    killed: bool  # admin `killing`: its supervisor kills it now
    running: dict[bytes, Job]
    held: list[HeldReply] | None  # replies held for the store's commits
    answering: bool  # an admin reply made in another thread (backup) is owed first
    hung_up: bool  # closed once that reply is sent

    def drain(self) -> None:
        """Hand this worker no more jobs; the one in hand runs to its end."""

    @property
    def kind(self) -> str:
        """ "client", "worker" or "admin", for the metrics."""

    def flush(self) -> None:
        """Write what is buffered (one write)."""

    def close(self) -> None:
        """Write what is owed, then close."""

    def abort(self) -> None:
        """Close now, dropping what is owed (and what is held for the store)."""

    def finish_backlog(self) -> None:
        """Act now on what is left of its last read (BackPressure.finish_backlog)."""

    def release_held(
        self, failed: frozenset[bytes], refusal_text: str, below: int
    ) -> list[tuple[bytes, int]]:
        """The store committed the rows under ``below``: send the JOB_CREATEDs held for
        them, in order up to the first held for a later row (QUEUE_ERROR for ``failed``);
        the handles refused, one for each submit, with that submit's priority."""

    def push(self) -> None:
        """Answer this worker's held grab with the job it was woken for, if still there."""

    def not_accepted(self, job: Job) -> None:
        """The job pushed to this worker was not accepted within --wake-deadline."""

    def lazy_due(self) -> None:
        """What this lazy-created client was sent without a write of its own is due now."""


class Hub:
    """The state of one server that its connections share."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.verbose_name = VERBOSE_NAMES[min(options.verbose, len(VERBOSE_NAMES) - 1)]
        self.connections: set[Writer] = set()
        self.ended = EndedPeers()  # closed worker connections' jobs, for admin `served`
        self.dirty: list[Writer] = []
        self.holding: list[Writer] = []  # connections holding replies until the store commits
        self.pushes: list[Writer] = []  # workers with a held grab woken this turn
        # Jobs pushed to held grabs and not accepted yet (docs/held-grab.md), by worker.
        self.unaccepted: Deadlines[Writer, Job] = Deadlines(
            options.wake_deadline, _not_accepted, self.call_later
        )
        # Lazy-created clients holding replies that asked for no write of their own.
        self.lazy: Deadlines[Writer, None] = Deadlines(LAZY_CREATED_MAX, _lazy_due, self.call_later)
        self.partial_bytes = 0  # bytes of not yet whole packets, over all connections
        self.tcp_partial_bytes = 0  # of those, held by TCP connections
        self.tcp_connections = 0
        # TLS connections accepted and not through their handshake yet (farm.server.tlsgate):
        # each holds a descriptor, so it counts as the TCP connection it will be.
        self.handshakes = 0
        # TCP connections whose peer stopped reading (past the transport's high-water mark):
        # what they leave unread counts against --max-unread-bytes (BackPressure).
        self.slow_readers: set[Any] = set()
        self.tcp_unsent = 0  # bytes made for TCP peers this turn, not written yet (BackPressure)
        self.tcp_held = 0  # bytes held for TCP peers behind a JOB_CREATED (BackPressure)
        self.stats = ServerStats()
        # Seconds of the loop TCP peers' admin commands owe, and when it was last paid
        # down (farm.server.adminside: TCP_ADMIN_SHARE).
        self.tcp_admin_debt = 0.0
        self.tcp_admin_paid = 0.0
        # A slow metrics exposition and until when it is answered again (exposition()).
        self.last_exposition: tuple[float, bytes] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._flush_due = False
        self._store_retry: Timer | None = None  # a flush for the deletes a failing store holds
        self._store_look: Timer | None = None  # the next look at the store's path (look_soon)
        self._store_looked = 0.0  # when a batch last looked at it (a commit's write, a look)
        self.all_closed: asyncio.Event | None = None  # set once the last connection is gone
        self.store: SQLiteStore | None = open_store(options.store, sync=options.store_sync)
        self.writer = None if self.store is None else StoreWriter(self.store, self._committed)
        # Every row under this id is committed, or refused and unstored: the replayed ones.
        self.committed_below = 0 if self.store is None else self.store.take().below
        self.jobs = JobServer(
            store=self.store,
            max_queued_bytes=options.max_queued_bytes,
            max_queue=options.max_queue,
            job_retries=options.job_retries,
            call_later=self.call_later,
            wake_deadline=options.wake_deadline,
        )
        self.jobs.pool_functions = options.pool_functions
        self.jobs.unix_share = bool(options.unix)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` seconds, then write what it made.

        Without a running loop (connections driven by hand, as in tests) timers never fire.
        """
        if self.loop is None:
            return INERT_TIMER

        def run() -> None:
            try:
                callback()
            finally:
                self.flush()  # what it made before a bug in it, too

        return self.loop.call_later(delay, run)

    def must_hold(self, job: Job) -> bool:
        """Whether a background submit's JOB_CREATED for ``job`` must wait: its row is not
        committed yet (staged, or in the batch the writer has in hand)."""
        return self.store is not None and job.store_id >= self.committed_below

    def push_soon(self, worker: Writer) -> None:
        """A worker holding a grab was woken: assign its job in this turn's flush, after the
        model is done changing (a background job wakes it once its commit is done)."""
        self.pushes.append(worker)
        if self.loop is not None:  # without a loop, the read that led here flushes next
            self.flush_soon()

    # -- what the connections share: their number, and unfinished packets' bytes --

    def admit(self, conn: Writer, tcp: bool) -> bool:
        """Room for one more connection (then it counts); TCP peers, which any local user
        can be, leave a share to the Unix socket, for the farm's own workers and callers."""
        if not self.room(tcp):
            return False
        if tcp:
            self.tcp_connections += 1
        self.connections.add(conn)
        return True

    def room(self, tcp: bool) -> bool:
        """Whether one more connection (a TCP one with ``tcp``) fits, handshakes counted."""
        limit = self.options.max_connections
        if len(self.connections) + self.handshakes >= limit:
            return False
        return not tcp or self.tcp_connections + self.handshakes < limit - min(64, limit // 10)

    def leave(self, conn: Writer, tcp: bool) -> None:
        """An admitted connection (``tcp`` as counted) is gone."""
        self.connections.discard(conn)
        self.ended.note(conn, conn.jobs_done, len(conn.running))
        if tcp:
            self.tcp_connections -= 1

    def count_partial(self, grew: int, tcp: bool) -> bool:
        """Count bytes of unfinished packets (``grew`` may be negative); whether they are now
        over --max-partial-bytes. TCP peers together may hold all but one whole packet's
        worth (--max-packet): one local user holding unfinished packets must not stop the
        farm's own callers on the Unix socket."""
        self.partial_bytes += grew
        options = self.options
        over = self.partial_bytes > options.max_partial_bytes
        if tcp:
            self.tcp_partial_bytes += grew
            share = max(options.max_packet, options.max_partial_bytes - options.max_packet)
            over = over or self.tcp_partial_bytes > share
        return over

    def flush_soon(self) -> None:
        """Flush after the reads of this loop turn (at once when no loop runs: tests)."""
        if self.loop is None:
            self.flush()
        elif not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Start the next commit of the store, then write what every touched connection is
        owed (replies held for a commit leave when it is done: ``_committed``)."""
        self._flush_due = False
        writer = self.writer
        store = self.store
        if writer is not None and writer.batch is None and store and store.pending:
            if store.due:
                writer.start(self.loop)
            elif self._store_retry is None:  # held-back deletes wait for their retry
                self._store_retry = self.call_later(store.retry_in, self._retry_store)
        if self.pushes:
            pushes, self.pushes = self.pushes, []
            for conn in pushes:
                conn.push()
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()

    def _committed(self, batch: Batch) -> None:
        """A batch is written (or failed): release the replies held for its rows, queue its
        jobs for workers, and start the next (on the loop's thread)."""
        store = self.store
        assert store is not None
        if not batch.look:
            self.stats.commits += 1
            self.stats.commit_time.observe(batch.seconds)
        failed = store.settle(batch)
        self.committed_below = batch.below
        if batch.look or batch.attempt:  # its write looked at the path (SQLiteStore.write)
            self._store_looked = monotonic()
        # Once a batch, not a job: nothing on the hot path.
        if (batch.look and batch.holds) or (batch.adds and not failed):
            self.look_soon()
        if store.pending and store.broken and self._store_retry is None:
            # Deletes of finished jobs held back while the store fails: write them when
            # it may be tried again, not at the next packet, which an idle server may
            # never get before it is killed (they would run again after the restart).
            self._store_retry = self.call_later(store.retry_in, self._retry_store)
        refusal = (store.broken or "job store error") if failed else ""
        refused = frozenset(failed)  # once, not per connection
        holding = self.holding
        self.holding = []
        for conn in holding:
            try:
                released = conn.release_held(refused, refusal, batch.below)
            except Exception:
                # A bug must cost one connection, never the batch: the other connections'
                # replies, and the batch's jobs (queued below), would wait for a restart.
                log.exception("fd %d: internal error releasing its held replies; closing", conn.fd)
                conn.abort()  # now, lingering or not, its held bytes given back
                continue
            # Counted per submit told QUEUE_ERROR (two may hold one job), while the
            # job is still there to say its function.
            for handle, priority in released:
                self.jobs.refused_by_store(handle, priority)
            if conn.held is not None:  # it holds for a later batch too
                self.holding.append(conn)
        self.jobs.committed(batch.handles, refused)
        if self.loop is not None:  # under a loop: write what this released, commit the next
            self.flush()

    def _retry_store(self) -> None:
        self._store_retry = None  # call_later's wrapper flushes next

    def look_soon(self) -> None:
        """Look at the store's path in STORE_LOOK_EVERY, as a commit does (the replayed jobs
        at start, a batch's adds committed, a look that found jobs): while it holds jobs, not
        only at the next commit, which an idle server may not make before a kill -9. No
        timer while it holds none: an idle server with no jobs is not woken for it."""
        if self._store_look is None and self.writer is not None:
            self._store_look = self.call_later(STORE_LOOK_EVERY, self._look_at_store)

    def _look_at_store(self) -> None:
        self._store_look = None
        writer, store = self.writer, self.store
        if writer is None or store is None:  # closed meanwhile
            return
        since = monotonic() - self._store_looked
        if since < STORE_LOOK_EVERY:  # a commit looked lately: none of the writer's time
            self._store_look = self.call_later(STORE_LOOK_EVERY - since, self._look_at_store)
        elif writer.batch is None and not store.pending:
            writer.start(self.loop, look=True)  # _committed looks again while it holds jobs
        else:  # a commit is owed or in flight, and it looks: the store may still hold jobs
            self.look_soon()

    def close_store(self) -> None:
        """Wait for the commit in flight, commit what is staged, close the store; later
        flushes only write."""
        writer, self.writer = self.writer, None  # flushes start no commit from here on
        if self._store_look is not None:
            self._store_look.cancel()
            self._store_look = None
        if writer is not None:
            writer.wait()  # the batch in flight, taken back: its replies released
            if self.store is not None and self.store.pending:
                writer.start(None)  # what was staged since, written here and now
            writer.close()
        self.flush()  # what the last commits released
        if self.store is not None:
            self.store.close()
            self.store = None


def _not_accepted(worker: Writer, job: Job) -> None:
    worker.not_accepted(job)


def _lazy_due(client: Writer, _: None) -> None:
    client.lazy_due()
