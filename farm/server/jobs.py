"""The job model: jobs, per-function queues, and every rule about what happens to a job.

Connections only translate between the wire and calls on ``JobServer``; all
decisions (coalescing, priority order, requeue and retries, timeouts, who is
woken) are made here, in one event loop, so no locks are needed.

A peer is anything with the attributes of ``Peer`` (farm/server/queues.py; the server's
connection class): the model reads its abilities and tells it what happened
(``wake``, ``job_progress``, ``job_ended``); it never makes bytes itself.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable

from farm.protocol.kinds import Priority
from farm.server.deadlines import Deadlines
from farm.server.dispatch import MAX_EXPIRED, WAKE_DEADLINE, Dispatch
from farm.server.functable import MAX_IDLE_FUNCTIONS, FunctionTable
from farm.server.jobcontrol import JobControl
from farm.server.metrics import BYTES, MAXQUEUE, FunctionStats
from farm.server.queues import (
    JOB_OVERHEAD,
    NORMAL,
    FunctionQueue,
    Job,
    Outcome,
    Peer,
    Progress,
    QueuedBytes,
    QueueFull,
    Timer,
    held_bytes,
    status_denominator,
    status_number,
)
from farm.server.store import SQLiteStore

#: The longest host part of a job handle: "H:" + host + ":" + 20 digits + NUL fit 64 bytes.
MAX_HANDLE_HOST = 64 - 1 - 20 - 3

__all__ = [
    "MAX_EXPIRED",
    "MAX_IDLE_FUNCTIONS",
    "WAKE_DEADLINE",
    "JOB_OVERHEAD",
    "FunctionQueue",
    "Job",
    "JobServer",
    "Outcome",
    "Peer",
    "Progress",
    "QueueFull",
]

log = logging.getLogger("farm.server")

# Module names for the hot path: reading a member off an enum class costs about 100 ns on
# Python 3.11.
_COMPLETE, _EXCEPTION = Outcome.COMPLETE, Outcome.EXCEPTION


class JobServer(FunctionTable, Dispatch, JobControl):
    """All job state of one server, and the rules that change it."""

    def __init__(
        self,
        *,
        job_retries: int = 0,
        hostname: str | None = None,
        call_later: Callable[[float, Callable[[], None]], Timer] | None = None,
        store: SQLiteStore | None = None,
        max_queued_bytes: int = 0,
        max_queue: int = 0,
        wake_deadline: float = WAKE_DEADLINE,
    ) -> None:
        self.max_queue = max_queue  # default `maxqueue` of every new function
        # TCP peers' jobs may fill 3/4 of a function's limits (FunctionQueue.full): set where
        # the server has a Unix socket to keep the rest for; gearmand's own way with none.
        self.unix_share = False
        self.job_retries = job_retries
        # Bytes held by live jobs; bounded so a flood cannot exhaust memory.
        self.queued = QueuedBytes(max_queued_bytes)
        # Clients keep a handle in 64 bytes (libgearman's GEARMAN_JOB_HANDLE_SIZE, with its
        # NUL): the host is cut so that "H:host:" and 20 digits always fit, as gearmand does.
        host = (hostname or socket.gethostname()).encode()[:MAX_HANDLE_HOST]
        host = host.decode("utf-8", "ignore").encode()  # not cut inside a character
        self.prefix = b"H:" + host + b":"
        # Handles count from a random start, not from 1 as gearmand's: a server restarted
        # (or a second one on this host) must not hand out a handle of an earlier job, which
        # the Executor's replay guard takes for the server's own retry of that job
        # (farm.executor.replay), so that a captured call would run again.
        self.first_number = secrets.randbelow(1 << 32) + 1
        self._counter = itertools.count(self.first_number)
        self._seq = itertools.count()
        self.functions: dict[bytes, FunctionQueue] = {}
        # What functions counted under the metrics' "other" before they left it.
        self.other_retired = FunctionStats()
        # Unused functions, oldest first (see MAX_IDLE_FUNCTIONS).
        self.idle: dict[bytes, None] = {}
        # Functions with runnable jobs: a grab looks at these, not at all of a worker's
        # abilities, so 100,000 CAN_DOs cannot make every grab slow.
        self.ready: set[bytes] = set()
        self.tcp_abilities = 0  # bounded by --max-tcp-abilities (WorkerSide.room_for)
        self.lingering: dict[Peer, set[bytes]] = {}  # awake, left as sleepers (Sleepers)
        self.with_work: dict[Peer, set[bytes]] = {}  # many-function workers' (Abilities)
        self.jobs: dict[bytes, Job] = {}
        self.uniques: dict[tuple[bytes, bytes, bool], Job] = {}
        # unique -> live jobs with it, in any function, oldest first (GET_STATUS_UNIQUE
        # answers the newest; `-` jobs are not in it, as gearmand finds none). A dict, not a
        # list: any local user may give one unique to a job in each of 65,536 functions, and a
        # list's remove() made forgetting them quadratic (a client closing with 20,000 such
        # jobs held the server for 7 s).
        self.by_unique: dict[bytes, dict[Job, None]] = {}
        self.epoch_heap: list[tuple[float, int, Job]] = []
        # New background jobs whose rows are not committed yet, by handle: queued (or held
        # for their epoch) once they are (JobControl.committed), counted as scheduled till then.
        self.awaiting: dict[bytes, Job] = {}
        self.poison: deque[tuple[bytes, bytes, bytes]] = deque(maxlen=1000)
        self.call_later = call_later
        self.wakes: Deadlines[Peer, FunctionQueue] = Deadlines(
            wake_deadline, self._wake_deadline, call_later
        )
        self.timeouts: dict[float, Deadlines[Job, Peer]] = {}
        self.store = store
        self._epoch_timer: Timer | None = None
        self.on_idle: Callable[[], None] | None = None
        self.stopping = False  # set by a server shutting down
        self.parent_pid: int | None = None  # the supervisor's (--parent-pid)
        self.pool_functions: frozenset[bytes] = frozenset()  # --pool-function, poolfunctions

    # -- functions ---------------------------------------------------------

    def running_count(self) -> int:
        return sum(fq.running for fq in self.functions.values())

    # -- submitting --------------------------------------------------------

    def submit(
        self,
        client: Peer | None,
        function: bytes,
        unique: bytes,
        data: bytes,
        *,
        priority: Priority = NORMAL,
        background: bool = False,
        reducer: bytes | None = None,
        when: float = 0.0,
        store_id: int = 0,
        tcp: bool = False,
        local: bool | None = None,
    ) -> Job:
        """Queue a job (or join the live job with the same function and unique).

        ``client`` is the foreground submitter to attach; None for background.
        Raises QueueFull when the function's queue is at its maximum, and
        StoreError when a background job cannot be made durable. ``store_id``
        is given when replaying a job that is already stored; ``tcp`` when a TCP peer
        submits it (QueuedBytes). ``local``: submitted on the Unix socket (by default, not
        over TCP; a replayed job's is stored with it): a unique joins a submit only to a
        job of the same side, so that no TCP peer, which any local user may be, reads the
        result of the farm's own callers' jobs by their key (listed by `show unique jobs`),
        nor gives them its own.
        """
        # `-` means "the payload is the unique": such jobs coalesce with each other
        # on their payload (never with a literal unique, never when empty), and
        # the worker still sees `-`, as with gearmand.
        key = (b"-\0" + data if data else b"") if unique == b"-" else unique
        if local is None:
            local = not tcp
        if key:
            job = self.uniques.get((function, key, local))
            if job is not None:
                if background:
                    if self.store is not None and not job.store_id:
                        # may raise: then nothing changed
                        job.store_id = self._store_add(job, priority)
                    job.background = True
                elif client is not None:
                    self._attach(job, client)
                return job
        # The common case, a function with an entry, without the call that makes one.
        fq = self.functions.get(function) or self.function(function)
        size = held_bytes(function, unique, data, reducer)
        try:
            # A replayed job was accepted once already; limits only guard new work.
            if not store_id:
                # A limit set at all (full's first test) before the call: most functions have
                # none, and every submit asks.
                limited = fq.max_total or fq.max_by_priority[priority]
                if limited and fq.full(priority, tcp and self.unix_share):
                    fq.stats.refused[MAXQUEUE][priority] += 1
                    share = "" if fq.full(priority) else ": TCP peers' jobs hold their 3/4 of it"
                    raise QueueFull(
                        f"function {function.decode(errors='replace')} is at its maxqueue{share}"
                    )
                q = self.queued  # its checks inline: this runs for every job
                if q.limit and (
                    q.held + size > q.limit or (tcp and q.tcp_held + size > q.tcp_limit)
                ):
                    fq.stats.refused[BYTES][priority] += 1
                    raise QueueFull(
                        f"function {function.decode(errors='replace')}: {q.refusal(size, tcp)};"
                        " [server] max_queued_bytes under farm up)"
                    )
            handle = self.prefix + str(next(self._counter)).encode()
            job = Job(
                handle, function, unique, data, priority, background, reducer, when, next(self._seq)
            )
            job.key = key
            job.local = local
            staged = False
            if store_id:
                job.store_id = store_id
            elif background and self.store is not None:
                job.store_id = self._store_add(job, priority)  # may raise: nothing registered yet
                staged = True
        except BaseException:
            # Refused (QueueFull, StoreError): an entry made here for a new name joins the
            # idle ones, freed in their turn. Left out, each refused submit to a new name
            # kept one for good: 10,000 of them held 52 MB, and over TCP they filled
            # --max-functions, after which no TCP peer could name a new function.
            self.note_unused(function)
            raise
        job.size = size
        q = self.queued
        q.held += size
        if tcp or store_id:
            job.tcp = True
            q.tcp_held += size
        self.jobs[handle] = job
        if not local:  # counted once registered: _forget, on every way out, uncounts it
            fq.tcp_jobs += 1
        if key:
            self.uniques[(function, key, local)] = job
        if unique and unique != b"-":  # `-` names no one job
            self.by_unique.setdefault(unique, {})[job] = None
        if client is not None and not background:
            job.clients[client] = 1  # _attach's work, for a job nobody else has joined yet
            client.attached.add(job)
        if not store_id:
            fq.stats.submitted[priority] += 1
        if staged:
            # No worker gets it before its row is committed: were it run and the commit
            # then failed, its client would be refused (QUEUE_ERROR) while a worker ran it.
            self.awaiting[handle] = job
            fq.scheduled[priority] += 1
        elif when and when > time.time():
            heapq.heappush(self.epoch_heap, (when, job.seq, job))
            fq.scheduled[priority] += 1
            self._arm_epoch_timer()
        else:
            fq.push(job)
            self._wake(fq)
        return job

    def _unqueue(self, job: Job) -> None:
        """Take a job that is not running off its queue, or out of the epoch heap."""
        fq = self.function(job.function)
        if job.queued:
            fq.discard(job)
        elif self.awaiting.pop(job.handle, None) is not None:
            fq.scheduled[job.priority] -= 1
        elif job.when:
            fq.scheduled[job.priority] -= 1
            self.epoch_heap = [entry for entry in self.epoch_heap if entry[2] is not job]
            heapq.heapify(self.epoch_heap)

    def _attach(self, job: Job, client: Peer) -> None:
        # Once per submit, as gearmand: a client that submits one unique twice on one
        # connection has two tasks with this handle, and each must get every packet
        # (libgearman and Perl's task sets match one reply to one task).
        job.clients[client] = job.clients.get(client, 0) + 1
        client.attached.add(job)

    def detach_client(self, client: Peer) -> None:
        """A client connection is gone: drop the foreground jobs nobody waits on any more."""
        for job in client.attached:
            if not job.clients.pop(client, 0):
                continue
            if not job.clients and not job.background and job.queued:
                fq = self.function(job.function)
                fq.discard(job)
                fq.stats.dropped[job.priority] += 1  # submitted, so it must end somewhere
                self._forget(job)
        client.attached.clear()

    # -- work updates ----------------------------------------------------------

    def held(self, worker: Peer, handle: bytes) -> Job | None:
        return worker.running.get(handle)

    def progress(self, job: Job, kind: Progress, fields: tuple[bytes, ...]) -> None:
        """WORK_STATUS / DATA / WARNING: kept (status) and passed to every attached client."""
        if kind is Progress.STATUS:  # kept as numbers, forwarded as sent (gearmand)
            job.numerator = status_number(fields[0])
            denominator = status_denominator(fields[1])
            if denominator is None:  # gearmand refuses it: no new denominator, nothing sent
                return
            job.denominator = denominator
        for client, times in list(job.clients.items()):  # a client may go meanwhile
            for _ in range(times):
                client.job_progress(job, kind, fields)

    def finish(self, worker: Peer, job: Job, outcome: Outcome, data: bytes = b"") -> None:
        """WORK_COMPLETE / FAIL / EXCEPTION from the worker holding the job: it ends."""
        self.functions[job.function].stats.run.observe(time.monotonic() - job.since)
        self._stop_running(worker, job)
        self._end(job, outcome, data)

    def _end(self, job: Job, outcome: Outcome, data: bytes = b"") -> None:
        fq = self.functions.get(job.function)
        if fq is not None:
            stats = fq.stats
            counter = (
                stats.completed
                if outcome is _COMPLETE
                else stats.exceptions
                if outcome is _EXCEPTION
                else stats.failed
            )
            counter[job.priority] += 1
        clients, job.clients = job.clients, {}
        for client, times in clients.items():
            client.job_ended(job, outcome, data)
            if times > 1:  # rare: one connection's submits of one unique (each is told)
                for _ in range(times - 1):
                    client.job_ended(job, outcome, data)
            client.attached.discard(job)
        self._forget(job)

    def _forget(self, job: Job) -> None:
        fq = self.functions.get(job.function)  # one look-up a job, for both uses below
        if self.jobs.pop(job.handle, None) is not None:
            q = self.queued
            q.held -= job.size
            if job.tcp:
                q.tcp_held -= job.size
            if not job.local and fq is not None:
                fq.tcp_jobs -= 1
        if job.store_id and self.store is not None:
            self.store.remove(job.store_id)
            job.store_id = 0
        if job.key:
            key = (job.function, job.key, job.local)
            if self.uniques.get(key) is job:
                del self.uniques[key]
        if job.unique:
            same = self.by_unique.get(job.unique)
            if same is not None and same.pop(job, 0) is None and not same:
                del self.by_unique[job.unique]
        if fq is not None and not fq.workers:
            self.note_unused(job.function)
        if self.on_idle is not None and not self.running_count():
            self.on_idle()
