"""What the job model is made of: jobs, per-function queues, and the peer contract.

``JobServer`` (farm/server/jobs.py) owns instances of these and applies the
rules; these classes only keep their own bookkeeping exact.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from time import monotonic
from typing import Protocol

from farm.protocol.kinds import Priority
from farm.server.metrics import FunctionStats

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


class Outcome(enum.Enum):
    """How a job ended, as the job model tells the clients waiting on it."""

    COMPLETE = "complete"  # the worker's result
    FAIL = "fail"  # the worker failed it, it timed out, was cancelled or ran out of retries
    EXCEPTION = "exception"  # the worker raised; clients without the option see FAIL


class Progress(enum.Enum):
    """What a worker reported about a running job, forwarded to its clients as it came."""

    STATUS = "status"  # numerator, denominator
    DATA = "data"
    WARNING = "warning"


#: isspace() in the C locale: the blanks strtol skips before a number.
_C_SPACE = b" \t\n\v\f\r"
_DIGITS = b"0123456789"
#: Significant digits past which a number is beyond a long whatever follows (10**19 > 2**63).
_LONG_DIGITS = 20
#: gearmand copies a WORK_STATUS denominator into a char[11] with snprintf: 10 bytes and a NUL.
_DENOMINATOR_BUFFER = 11


def status_number(field: bytes) -> bytes:
    """A WORK_STATUS numerator as GET_STATUS answers it: the number gearmand keeps, its
    ``(uint32_t)atoi``: strtol's value (clamped to a 64-bit long), then its low 32 bits.
    Clients parse these as integers (python-gearman's int(), libgearman's atoi), and a
    worker's `1.5` or empty field broke or misled them.

    A scan, not a regex: a regex's blank run followed by no digit backtracked, and a 60 MB
    blank field froze the server for seconds. Every step here is linear or bounded."""
    rest = field.lstrip(_C_SPACE)
    negative = rest[:1] == b"-"
    if rest[:1] in (b"+", b"-"):
        rest = rest[1:]
    head = rest.lstrip(b"0")[:_LONG_DIGITS]
    digits = head[: len(head) - len(head.lstrip(_DIGITS))]
    value = int(digits) if digits else 0
    value = min(-value if negative else value, (1 << 63) - 1)  # strtol's ERANGE: LONG_MAX
    value = max(value, -(1 << 63))  # or LONG_MIN
    return b"%d" % (value & 0xFFFFFFFF)


def status_denominator(field: bytes) -> bytes | None:
    """A WORK_STATUS denominator as gearmand keeps it, or None where gearmand refuses the
    report (keeps the numerator, not the denominator, and forwards nothing): the field up to
    a NUL did not fit its 11-byte buffer. What fits is cut to the buffer's 10 bytes first,
    so `12345678901` is kept as 1234567890."""
    text = field[: _DENOMINATOR_BUFFER + 1]
    if b"\0" in text:  # snprintf's %.*s stops there
        text = text[: text.index(b"\0")]
    if len(text) > _DENOMINATOR_BUFFER:
        return None
    return status_number(text[: _DENOMINATOR_BUFFER - 1])


class Peer(Protocol):
    """What the job model needs of a connection: its state, and what to tell it.

    The model says what happened (wake up, a job's news, a job's end); the
    connection alone turns that into bytes.
    """

    abilities: dict[bytes, float]  # function -> timeout in seconds (0 = none)
    running: dict[bytes, Job]  # handle -> job this worker holds
    expired: dict[bytes, int]  # jobs it held that timed out (times): a late answer is dropped
    attached: set[Job]  # foreground jobs this client waits on
    sleeping: bool
    woken: bool  # woken (NOOP) and not come to grab yet; see Sleepers._wake
    late: bool  # let its last wake-up (or push) pass the deadline; see Sleepers._add_sleeper
    draining: bool  # farm's admin `drain`: no job is handed to it any more (Sleepers.drain)
    killed: bool  # farm's admin `killing`: its supervisor kills it now, so its job was stopped
    gives_back: bool  # OPTION_REQ give-back: a job of a function it gives up was not run
    tcp: bool  # a TCP peer (any local user), not one on the Unix socket

    def wake(self) -> None:
        """A sleeping worker has a job it can grab (NOOP)."""

    def job_progress(self, job: Job, kind: Progress, fields: tuple[bytes, ...]) -> None:
        """A job this client waits on reported progress (WORK_STATUS / DATA / WARNING)."""

    def job_ended(self, job: Job, outcome: Outcome, data: bytes) -> None:
        """A job this client waits on ended (WORK_COMPLETE / FAIL / EXCEPTION)."""

    def let_go(self, job: Job) -> None:
        """This worker no longer holds ``job`` (it ended, timed out, was taken back): its
        clients' reading holds the worker no longer."""

    def catch_up(self) -> None:
        """Act now on what the peer sent that was read and not acted on yet (a deadline of
        its job is due: an answer read before it counts)."""


class Timer(Protocol):
    """What the job model keeps of a timer it started (asyncio's and uvloop's handles)."""

    def cancel(self) -> None: ...


class _Inert:
    """A timer that will never fire: nothing to cancel."""

    def cancel(self) -> None:
        pass


#: The timer of a hub with no loop, and the mark of a ``Deadlines`` firing (deadlines.py).
INERT_TIMER: Timer = _Inert()


class Expiry(Protocol):
    """Where a running job's CAN_DO_TIMEOUT deadline is kept (a ``Deadlines``, deadlines.py)."""

    length: float  # the timeout, in seconds

    def add(self, key: Job, value: Peer) -> None: ...

    def discard(self, key: Job) -> None: ...


class QueueFull(Exception):
    """A function's queue (or the server's byte budget) is at its limit."""


class Job:
    """One job: queued, held for its epoch, or running on a worker."""

    __slots__ = (
        "handle",
        "key",
        "function",
        "unique",
        "data",
        "priority",
        "background",
        "reducer",
        "when",
        "seq",
        "clients",
        "worker",
        "numerator",
        "denominator",
        "retries",
        "queued",
        "store_id",
        "expiry",
        "since",
        "size",
        "tcp",
        "local",
    )

    def __init__(
        self,
        handle: bytes,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        reducer: bytes | None,
        when: float,
        seq: int,
    ) -> None:
        self.handle = handle
        self.key = unique
        self.function = function
        self.unique = unique
        self.data = data
        self.priority = priority
        self.background = background
        self.reducer = reducer
        self.when = when
        self.seq = seq
        # Each attached client, and how many of its submits joined the job (each gets every
        # packet). A dict: a client that goes is let go in O(1); a list was copied without
        # it, and thousands of connections of one job made their close quadratic.
        self.clients: dict[Peer, int] = {}
        self.worker: Peer | None = None
        self.numerator = b"0"
        self.denominator = b"0"
        self.retries = 0
        self.queued = False
        self.store_id = 0  # row in the durable store; 0 when not stored
        self.expiry: Expiry | None = None  # its CAN_DO_TIMEOUT deadline, while it runs
        self.since = 0.0  # monotonic: when it was queued, then when a worker took it
        self.size = 0  # the bytes it holds, as --max-queued-bytes counts them (held_bytes)
        self.tcp = False  # counted in the TCP peers' share of them (QueuedBytes)
        # Submitted on the Unix socket (a stored job: as it was first): a unique joins it only
        # to a submit of the same side (JobServer.submit)
        self.local = False

    def __repr__(self) -> str:
        return f"<Job {self.handle.decode()} {self.function!r}>"  # a name may not be UTF-8


#: FunctionQueue.served: by a TCP peer, by a peer on the Unix socket.
SERVED_OVER_TCP, SERVED_LOCALLY = 1, 2


class FunctionQueue:
    """The jobs of one function: three FIFO queues (high, normal, low) and who can run them.

    Removed jobs stay in their deque, marked ``queued = False``, and are
    skipped when they reach the head; ``counts`` is kept exact for the admin
    protocol.
    """

    __slots__ = (
        "name",
        "queues",
        "counts",
        "scheduled",
        "running",
        "workers",
        "sleepers",
        "max_total",
        "max_by_priority",
        "ready",
        "stats",
        "served",
        "in_other",
        "labelled",
        "watchers",
        "tcp_jobs",
    )

    def __init__(self, name: bytes, ready: set[bytes] | None = None) -> None:
        self.name = name
        # The server's index of functions with runnable jobs, kept here as counts change.
        self.ready: set[bytes] = set() if ready is None else ready
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        self.counts = [0, 0, 0]
        self.running = 0
        self.workers: set[Peer] = set()
        # Workers asleep (PRE_SLEEP) that can take this function, in the order they went to
        # sleep: the last is woken first; one that was late goes to the front (move_to_end).
        # Each with whether it was put there late (Sleepers._add_sleeper, _pass_over).
        self.sleepers: OrderedDict[Peer, bool] = OrderedDict()
        # Jobs held for their epoch time: counted in status, not yet runnable.
        self.scheduled = [0, 0, 0]
        # `maxqueue F N` bounds the function's jobs, `maxqueue F H N L` each priority's submits
        # (0 = no limit). As in gearmand, every limit counts all of the function's jobs:
        # queued, held for their epoch and running (`maxqueue F 1` lets one job in at a time).
        self.max_total = 0
        self.max_by_priority: tuple[int, int, int] = (0, 0, 0)
        self.stats = FunctionStats()
        # A worker has registered it: the metrics label it by name from then on (while it
        # is in the table), not only while a worker is there, so a pool that is recycling
        # keeps its series; names nobody ever served are summed as "other". SERVED_LOCALLY
        # once a worker on the Unix socket did (the farm's own: labelled first).
        self.served = 0
        # The last scrape summed it under function="other": what it counted stays there
        # when it leaves (Jobs.other_retired; farm.server.exposition).
        self.in_other = False
        # The last scrape showed it under its own name: what it counted is in that series,
        # not other's, when its entry is freed (FunctionTable.free_entry). Not ``served``:
        # a served function past the MAX_LABELLED labelled ones is summed under other.
        self.labelled = False
        # The workers of many functions that can take its jobs, each with its index of
        # those of its functions that have work (farm.server.abilities): told here when
        # this one gets work and when it has none left.
        self.watchers: dict[Peer, set[bytes]] = {}
        # Its live jobs submitted over TCP (not Job.local), as they count against the limits.
        self.tcp_jobs = 0

    def full(self, priority: int, tcp_share: bool = False) -> bool:
        """Whether a submit at ``priority`` passes a limit. ``tcp_share``: a TCP peer's, on a
        server with a Unix socket: TCP's jobs may fill three quarters of each limit together
        (as of --max-queued-bytes, QueuedBytes), the rest is kept for the farm's own callers,
        whom one local user's jobs held for their epoch a year ahead (stored: across
        restarts too) refused. A limit under 4 keeps nothing back (`maxqueue F 1`)."""
        limit = self.max_by_priority[priority] or self.max_total
        if not limit:
            return False  # no limit: nothing to count (every submit asks)
        total, most = self.queued + self.running, self.max_total
        if total >= limit or most and total >= most:
            return True
        tcp = self.tcp_jobs
        return tcp_share and (tcp >= limit - limit // 4 or bool(most) and tcp >= most - most // 4)

    @property
    def queued(self) -> int:
        """Jobs waiting, whether runnable now or held for their epoch."""
        c, s = self.counts, self.scheduled
        return c[0] + c[1] + c[2] + s[0] + s[1] + s[2]

    def head(self, priority: int) -> Job | None:
        """The first live job of one priority, dropping removed ones on the way."""
        q = self.queues[priority]
        while q:
            job = q[0]
            if job.queued:
                return job
            q.popleft()
        return None

    def push(self, job: Job, *, front: bool = False) -> None:
        job.since = monotonic()
        if front:
            self.queues[job.priority].appendleft(job)
        else:
            self.queues[job.priority].append(job)
        job.queued = True
        self.counts[job.priority] += 1
        if self.watchers and self.name not in self.ready:
            for with_work in self.watchers.values():
                with_work.add(self.name)
        self.ready.add(self.name)

    def pop(self, job: Job) -> None:
        """Take ``job`` (the head of its priority) off the queue."""
        q = self.queues[job.priority]
        if q and q[0] is job:
            q.popleft()
        job.queued = False
        self.counts[job.priority] -= 1
        self._maybe_empty()

    def _maybe_empty(self) -> None:
        c = self.counts
        if not (c[0] or c[1] or c[2]):
            self.ready.discard(self.name)
            if self.watchers:
                for with_work in self.watchers.values():
                    with_work.discard(self.name)

    def discard(self, job: Job) -> None:
        """Remove a queued job that may not be at the head: marked now, dropped from the
        deque when it reaches the head or when dead entries outnumber live ones."""
        job.queued = False
        self.counts[job.priority] -= 1
        self._maybe_empty()
        q, live = self.queues[job.priority], self.counts[job.priority]
        if not live:
            q.clear()
        elif len(q) > 2 * live + 64:
            kept = [j for j in q if j.queued]
            q.clear()
            q.extend(kept)


#: What the server's own record of a live job costs (its Job, the handle, its place in the
#: queue and the indexes): counted too, so that a flood of empty jobs meets the limit.
JOB_OVERHEAD = 512


def held_bytes(function: bytes, unique: bytes, data: bytes, reducer: bytes | None) -> int:
    """The bytes a live job holds, as --max-queued-bytes counts them: every argument, not
    only the payload (a flood of long names must hit the limit too), and JOB_OVERHEAD."""
    n = len(function) + len(unique) + len(data) + JOB_OVERHEAD
    return n + len(reducer) if reducer else n


class QueuedBytes:
    """What live jobs hold against --max-queued-bytes (0: no limit). Jobs submitted over
    TCP may hold three quarters of it together: the rest is kept for the farm's own
    callers on the Unix socket, so that a local user who fills the queues with jobs no
    worker serves does not shut them out. Jobs replayed from the store count as TCP's
    (where a job came from is not stored): that can only leave TCP peers less."""

    __slots__ = ("limit", "tcp_limit", "held", "tcp_held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tcp_limit = limit - limit // 4
        self.held = 0  # JobServer.submit and _forget count, inline (every job)
        self.tcp_held = 0

    def refusal(self, size: int, tcp: bool) -> str | None:
        """Why a new job of ``size`` bytes may not be queued, or None."""
        limit = self.limit
        if not limit:
            return None
        if self.held + size > limit:
            return f"the live jobs' bytes would pass --max-queued-bytes ({limit}"
        if tcp and self.tcp_held + size > self.tcp_limit:
            return f"TCP peers' jobs would pass their share, 3/4 of --max-queued-bytes ({limit}"
        return None
