"""The server's table of functions: an entry made when a name is first used, kept while it
holds a job, a worker or a limit of its own, and an idle one freed in its turn.

A mixin of :class:`farm.server.jobs.JobServer` (split off along this seam). gearmand keeps
every name it ever saw, and `status` lists them; here the idle ones are kept up to
MAX_IDLE_FUNCTIONS, the oldest freed past it, so that a flood of distinct names cannot hold
memory for good, and --max-functions counts only the entries in use (``room_for_new``).
"""

from __future__ import annotations

from farm.server.metrics import FunctionStats
from farm.server.queues import SERVED_LOCALLY, FunctionQueue

__all__ = ["FunctionTable", "MAX_IDLE_FUNCTIONS"]

#: Functions with no job, no worker and no limit of their own are kept (gearmand keeps them
#: all, and `status` lists them) up to this many; past it the oldest are freed, so a flood
#: of distinct names cannot hold memory forever.
MAX_IDLE_FUNCTIONS = 1024


class FunctionTable:
    """The function entries of a ``JobServer`` (see the module docstring)."""

    # JobServer's, set in its __init__ (declared for the type checker).
    functions: dict[bytes, FunctionQueue]
    idle: dict[bytes, None]  # unused functions, oldest first
    ready: set[bytes]
    max_queue: int
    pool_functions: frozenset[bytes]
    other_retired: FunctionStats

    def function(self, name: bytes) -> FunctionQueue:
        fq = self.functions.get(name)
        if fq is None:
            fq = self.functions[name] = FunctionQueue(name, self.ready)
            fq.max_total = self.max_queue
            if name in self.pool_functions:
                # Served by the farm's own pools, whose workers may not have registered yet
                # (a restarted server, clients back first): a scrape then summed it under
                # other, which kept a copy of its counts once it was shown by name.
                fq.served = SERVED_LOCALLY
            # Not idle until a job or a worker has used it (docs/server.md): a record left
            # of an entry of this name freed before would free this one for nothing.
            self.idle.pop(name, None)
        return fq

    def note_unused(self, name: bytes) -> None:
        """``name`` may have lost its last job or worker: remember it as idle, and free the
        oldest idle functions past MAX_IDLE_FUNCTIONS."""
        fq = self.functions.get(name)
        if fq is None or not self._unused(fq):
            return
        idle = self.idle
        idle.pop(name, None)
        idle[name] = None
        while len(idle) > MAX_IDLE_FUNCTIONS:
            self._free_oldest_idle()

    def room_for_new(self, limit: int) -> bool:
        """Whether a function the server does not hold may be added under ``limit``
        (--max-functions) entries. Idle ones are not the server's to keep (docs/server.md):
        the oldest are freed to make room first. Counted, 50 calls that timed out on 50 names
        nobody serves made `--max-functions 50` refuse every new name for good. The one
        rule of both places that add a name for a TCP peer (Connection.function_ok, the
        admin's `create function` and `maxqueue`)."""
        functions, idle = self.functions, self.idle
        while len(functions) >= limit and idle:
            self._free_oldest_idle()
        return len(functions) < limit

    def _free_oldest_idle(self) -> None:
        """Forget the oldest idle name; its entry is freed if it is still unused (a job or
        a worker may have come to it since)."""
        oldest = next(iter(self.idle))
        del self.idle[oldest]
        fq = self.functions.get(oldest)
        if fq is not None and self._unused(fq):
            self.free_entry(oldest)

    def free_entry(self, name: bytes) -> FunctionQueue:
        """Delete ``name``'s entry (it must have one) and its idle record, if any. What it
        counted stays in the metrics' ``other`` unless the last scrape showed it under its
        own name (``FunctionQueue.labelled``): ``other`` must not drop
        (farm.server.exposition), nor miss what a function counted before a scrape summed
        it there: a flood of submits refused to new names frees most of them between two
        scrapes, and a served function past the MAX_LABELLED labelled ones is summed there
        too."""
        fq = self.functions.pop(name)
        self.idle.pop(name, None)
        if not fq.labelled:
            self.other_retired.absorb(fq.stats)
        return fq

    def _unused(self, fq: FunctionQueue) -> bool:
        return not (
            fq.workers
            or fq.running
            or fq.queued
            or fq.max_total != self.max_queue
            or any(fq.max_by_priority)
        )
