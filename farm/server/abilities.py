"""What workers can do: CAN_DO, CANT_DO, RESET_ABILITIES and a worker connection's end, and
for a worker of many functions the index of those of its functions that have work.

A mixin of :class:`farm.server.dispatch.Dispatch` (split off along this seam). A grab
looks for the best job among the functions both the worker's and in ``ready`` (functions
with runnable jobs), walking the smaller of the two; any local user may register 4,096
functions on a connection and queue jobs in 4,096 others, and then each 12-byte grab
walked 4,096 names to find nothing. A worker of more than INDEX_MIN functions has its
own set of them that have work (``with_work``), kept by their queues as they get work and
run out of it (``FunctionQueue.watchers``): its grab walks only that.
"""

from __future__ import annotations

from collections.abc import Callable

from farm.server.queues import SERVED_LOCALLY, SERVED_OVER_TCP, FunctionQueue, Job, Peer
from farm.server.sleepers import Sleepers

__all__ = ["Abilities", "INDEX_MIN"]

#: A worker of more functions than this has an index of those with work, kept until it
#: has half as many or fewer. Each queue tells every such worker of its functions when it
#: gets work and when it has none, so this bounds both costs: a grab without the index
#: walks at most this many names, and TCP peers' --max-tcp-abilities (262,144) make at
#: most 1,020 indexed workers of one function.
INDEX_MIN = 512


class Abilities(Sleepers):
    """Workers' registrations (see the module docstring)."""

    # JobServer's and Dispatch's, read and written here (declared for the type checker).
    tcp_abilities: int  # functions registered by TCP connections, all together
    with_work: dict[Peer, set[bytes]]  # a worker's index, once it has had > INDEX_MIN
    function: Callable[[bytes], FunctionQueue]
    note_unused: Callable[[bytes], None]
    _requeue: Callable[[Peer, Job], None]
    _give_back: Callable[[Peer, Job], None]

    def can_do(self, worker: Peer, function: bytes, timeout: float = 0.0) -> None:
        fq = self.function(function)
        new = fq.name not in worker.abilities
        if worker.tcp and new:
            self.tcp_abilities += 1
        # The function's own name as the key: a packet's copy of a 512-byte name, kept
        # per connection, cost every registration over 500 bytes more.
        worker.abilities[fq.name] = timeout
        fq.workers.add(worker)
        fq.served = max(fq.served, SERVED_OVER_TCP if worker.tcp else SERVED_LOCALLY)
        if new:
            self._watch(worker, fq)
        if worker.sleeping:
            self._add_sleeper(fq, worker)
            if function in self.ready:  # its jobs already wait: wake it, as their submit would
                self._wake(fq)
        elif new and self.lingering:
            missing = self.lingering.get(worker)
            if missing is not None:  # in no list of this one yet: put there when it sleeps
                missing.add(fq.name)

    def _watch(self, worker: Peer, fq: FunctionQueue) -> None:
        """Keep the worker's index of its functions with work, once it has more than
        INDEX_MIN; made then, from all of them (paid for by their registrations), and kept
        until it has half as many (_unwatch), so that adding and removing one function in
        turn around the limit does not make and drop it each time."""
        with_work = self.with_work.get(worker)
        if with_work is None:
            if len(worker.abilities) <= INDEX_MIN:
                return
            with_work = self.with_work[worker] = set()
            ready, functions = self.ready, self.functions
            for name in worker.abilities:
                functions[name].watchers[worker] = with_work
                if name in ready:
                    with_work.add(name)
            return
        fq.watchers[worker] = with_work
        if fq.name in self.ready:
            with_work.add(fq.name)

    def _unwatch(self, worker: Peer) -> None:
        """Drop the index of a worker left with INDEX_MIN // 2 functions or fewer (paid for by
        the CANT_DOs since it passed INDEX_MIN). Kept, a connection of 513 functions that
        gave back all but one stayed on that one's queue, and thousands of them made each of
        its jobs tell thousands of indexes, with only one TCP registration counted for each."""
        del self.with_work[worker]
        functions = self.functions
        for name in worker.abilities:
            del functions[name].watchers[worker]

    def cant_do(self, worker: Peer, function: bytes) -> None:
        if worker.abilities.pop(function, None) is None:
            return
        if worker.tcp:
            self.tcp_abilities -= 1
        fq = self.function(function)
        fq.workers.discard(worker)
        fq.sleepers.pop(worker, None)
        if fq.watchers.pop(worker, None) is not None:
            self.with_work[worker].discard(function)
            if len(worker.abilities) <= INDEX_MIN // 2:
                self._unwatch(worker)
        missing = self.lingering.get(worker) if self.lingering else None
        if missing is not None:
            missing.discard(function)
        if worker.woken and self.wakes.value(worker) is fq:
            self._pass_on_wake(worker)  # woken for this function's job, it will not come
        # Its job of this function: a worker that asked for give-back (farm's) sends CANT_DO
        # only with no such job in hand that it runs, so this one came after it and is let go
        # unrun; under job_retries = 1 a drain (scale-down, restart) failed it as a poison
        # job. Another may have run it partly and given up mid-job: a retry, as gearmand.
        requeue = self._give_back if worker.gives_back else self._requeue
        for job in [j for j in worker.running.values() if j.function == function]:
            requeue(worker, job)
        if not fq.workers:
            self.note_unused(function)

    def reset_abilities(self, worker: Peer) -> None:
        for function in list(worker.abilities):
            self.cant_do(worker, function)

    def detach_worker(self, worker: Peer) -> None:
        """A worker connection is gone: forget what it could do, then requeue what it held
        (in that order, so the requeue wakes a live sleeper, not this one)."""
        watched = self.with_work.pop(worker, None) is not None
        self.lingering.pop(worker, None)
        for function in worker.abilities:
            fq = self.functions.get(function)
            if fq is not None:
                fq.workers.discard(worker)
                fq.sleepers.pop(worker, None)
                if watched:
                    del fq.watchers[worker]
        gone = list(worker.abilities)
        worker.abilities.clear()
        if worker.tcp:
            self.tcp_abilities -= len(gone)
        worker.sleeping = False
        self._pass_on_wake(worker)  # it will not come: the job it was woken for needs another
        for job in list(worker.running.values()):
            self._requeue(worker, job)
        for function in gone:
            self.note_unused(function)
