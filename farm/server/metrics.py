"""The server's own numbers, counted where they change (farm.server.exposition shows them).

Counting sits on the hot path, so it is plain integer arithmetic on objects the
server already touches: each function's ``FunctionStats`` lives on its
``FunctionQueue``, and histograms are bucket arrays filled with one
``bisect``. Nothing here takes a lock or allocates per job.

The names, labels and meaning of each metric are in docs/monitoring.md.
"""

from __future__ import annotations

import time
from bisect import bisect_left

__all__ = [
    "Histogram",
    "FunctionStats",
    "ServerStats",
    "BUCKETS",
    "COMMIT_BUCKETS",
    "COUNTER_FIELDS",
    "REFUSAL_REASONS",
    "MAXQUEUE",
    "BYTES",
    "STORE",
    "MAX_FUNCTIONS",
    "REGISTRATION_REFUSALS",
]

#: Upper bounds (seconds) of the queue-wait and run-time buckets: 0.5 ms to 5 minutes.
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Commits are quicker than jobs: 50 µs to 1 s.
COMMIT_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    1.0,
)


class Histogram:
    """Bucket counts (not cumulative) and a sum: what one observation costs is a bisect."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @classmethod
    def merged(cls, hists: list[Histogram]) -> Histogram:
        """One histogram holding all of ``hists``' observations (same bounds), for a scrape."""
        if len(hists) == 1:
            return hists[0]
        out = cls(hists[0].bounds if hists else BUCKETS)
        for hist in hists:
            out.counts = [a + b for a, b in zip(out.counts, hist.counts, strict=True)]
            out.total += hist.total
        return out

    def absorb(self, other: Histogram) -> None:
        """Add ``other``'s observations to these (same bounds)."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_bound(bound), float(running)))
        out.append(("+Inf", float(running + self.counts[-1])))
        return out


def _bound(value: float) -> str:
    return repr(value)


#: FunctionStats' counters (each a list by priority), in the order the metrics list them.
COUNTER_FIELDS = (
    "submitted",
    "completed",
    "failed",
    "exceptions",
    "dropped",
    "retried",
    "timed_out",
)
#: Why a submit was refused with QUEUE_ERROR (the ``reason`` label of
#: farm_jobs_refused_total): the function's ``maxqueue``, --max-queued-bytes, the durable
#: store failing (a background job it could not save), or --max-functions (a TCP peer
#: naming a function the server does not hold: counted under the metrics' ``other``, as
#: the function has no entry). Indexes of ``FunctionStats.refused``.
REFUSAL_REASONS = ("maxqueue", "bytes", "store", "max_functions")
MAXQUEUE, BYTES, STORE, MAX_FUNCTIONS = 0, 1, 2, 3
#: Why a worker's CAN_DO (or CAN_DO_TIMEOUT) was refused with QUEUE_ERROR, so that it does
#: not serve the function (the ``reason`` label of farm_worker_registrations_refused_total):
#: --max-functions, or --max-tcp-abilities: the keys of ``ServerStats.registrations_refused``.
REGISTRATION_REFUSALS = ("max_functions", "max_tcp_abilities")


class FunctionStats:
    """One function's counters, each indexed by priority (high, normal, low)."""

    __slots__ = (*COUNTER_FIELDS, "refused", "wait", "run")

    def __init__(self) -> None:
        self.submitted = [0, 0, 0]
        self.completed = [0, 0, 0]
        self.failed = [0, 0, 0]
        self.exceptions = [0, 0, 0]
        self.dropped = [0, 0, 0]
        self.retried = [0, 0, 0]
        self.timed_out = [0, 0, 0]
        # Submits refused, by reason (REFUSAL_REASONS), then priority: no job was made,
        # or (the store's commit failed) the one made is forgotten.
        self.refused = [[0, 0, 0] for _ in REFUSAL_REASONS]
        self.wait = Histogram()  # submit (or requeue) -> assigned to a worker
        self.run = Histogram()  # assigned -> the worker's answer

    def absorb(self, other: FunctionStats) -> None:
        """Add ``other``'s counts to these (the metrics' ``other`` keeps what functions
        that left it counted there: farm.server.exposition)."""
        for field in COUNTER_FIELDS:
            mine, theirs = getattr(self, field), getattr(other, field)
            for i in range(3):
                mine[i] += theirs[i]
        for mine, theirs in zip(self.refused, other.refused, strict=True):
            for i in range(3):
                mine[i] += theirs[i]
        self.wait.absorb(other.wait)
        self.run.absorb(other.run)

    def counted(self) -> bool:
        """Whether anything was counted here."""
        return (
            any(any(getattr(self, f)) for f in COUNTER_FIELDS)
            or any(any(by_priority) for by_priority in self.refused)
            or any(self.wait.counts + self.run.counts)
        )


class ServerStats:
    """What the server counts outside any one function."""

    __slots__ = (
        "started",
        "started_monotonic",
        "bytes_in",
        "bytes_out",
        "commits",
        "commit_time",
        "registrations_refused",
    )

    def __init__(self) -> None:
        self.started = time.time()
        # Uptime is counted from here: time() less ``started`` went negative when NTP
        # stepped the clock back, and counted an hour that never passed when it stepped on.
        self.started_monotonic = time.monotonic()
        self.registrations_refused = dict.fromkeys(REGISTRATION_REFUSALS, 0)
        self.bytes_in = 0
        self.bytes_out = 0
        self.commits = 0
        self.commit_time = Histogram(COMMIT_BUCKETS)
