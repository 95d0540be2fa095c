"""What workers can do: CAN_DO, CANT_DO, RESET_ABILITIES and a worker connection's end.

A mixin of :class:`farm.server.dispatch.Dispatch` (split off along this seam).
"""

from __future__ import annotations

from collections.abc import Callable

from farm.server.queues import SERVED_LOCALLY, SERVED_OVER_TCP, FunctionQueue, Job, Peer
from farm.server.sleepers import Sleepers

__all__ = ["Abilities"]


class Abilities(Sleepers):
    """Workers' registrations (see the module docstring)."""

    # JobServer's and Dispatch's, read and written here (declared for the type checker).
    tcp_abilities: int  # functions registered by TCP connections, all together
    function: Callable[[bytes], FunctionQueue]
    note_unused: Callable[[bytes], None]
    _requeue: Callable[[Peer, Job], None]

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
        if worker.sleeping:
            self._add_sleeper(fq, worker)
            if function in self.ready:  # its jobs already wait: wake it, as their submit would
                self._wake(fq)
        elif new and self.lingering:
            missing = self.lingering.get(worker)
            if missing is not None:  # in no list of this one yet: put there when it sleeps
                missing.add(fq.name)

    def cant_do(self, worker: Peer, function: bytes) -> None:
        if worker.abilities.pop(function, None) is None:
            return
        if worker.tcp:
            self.tcp_abilities -= 1
        fq = self.function(function)
        fq.workers.discard(worker)
        fq.sleepers.pop(worker, None)
        missing = self.lingering.get(worker) if self.lingering else None
        if missing is not None:
            missing.discard(function)
        if worker.woken and self.wakes.value(worker) is fq:
            self._pass_on_wake(worker)  # woken for this function's job, it will not come
        for job in [j for j in worker.running.values() if j.function == function]:
            self._requeue(worker, job)
        if not fq.workers:
            self.note_unused(function)

    def reset_abilities(self, worker: Peer) -> None:
        for function in list(worker.abilities):
            self.cant_do(worker, function)

    def detach_worker(self, worker: Peer) -> None:
        """A worker connection is gone: forget what it could do, then requeue what it held
        (in that order, so the requeue wakes a live sleeper, not this one)."""
        self.lingering.pop(worker, None)
        for function in worker.abilities:
            fq = self.functions.get(function)
            if fq is not None:
                fq.workers.discard(worker)
                fq.sleepers.pop(worker, None)
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
