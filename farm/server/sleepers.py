"""Sleeping workers and waking them: one sleeper per runnable job, never a herd.

A mixin of :class:`farm.server.dispatch.Dispatch` (split off along this seam). A job
wakes the sleeper that went to sleep last, the warmest process; one that let a wake-up
or a pushed job pass its deadline sleeps at the cold end until it comes in time. A woken
worker that does not come within WAKE_DEADLINE (farm.server.dispatch) is passed over for
another, and one that will not come (gone, draining) passes its wake-up on at once.

A worker of more than RESETTLE_MAX functions is left in its sleepers lists when it wakes
(``lingering``): any local user may register 4,096 functions on a connection, and a
PRE_SLEEP and a GRAB_JOB in turn (24 bytes) put it in and took it out of 4,096 lists. Its
entries there are stale while it is awake: ``_wake`` drops each one it meets (paid for by
the insertion that made it), and sleeping again puts it back only in the lists that
dropped it. Such a worker stays where it first went to sleep, as a repeated PRE_SLEEP does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from farm.server.deadlines import Deadlines
from farm.server.queues import FunctionQueue, Peer

__all__ = ["Sleepers", "RESETTLE_MAX"]

log = logging.getLogger("farm.server")

#: A worker asleep already that says PRE_SLEEP again is made the newest sleeper (it went to
#: sleep last) when it has at most this many functions, as the farm's own workers do.
RESETTLE_MAX = 16


def _many(worker: Peer) -> bool:
    """Whether it keeps its places in its lists across its sleeps (the module docstring).
    Then, late since it was put in one, it is moved to the cold end by the wake that meets
    it there. One of fewer functions is put in each list anew each time it sleeps, and
    keeps the place it was given: late while asleep (a pushed job taken back), it is still
    woken first, as before workers of many functions were left in their lists."""
    return len(worker.abilities) > RESETTLE_MAX


class Sleepers:
    """The sleeping and waking of workers (see the module docstring)."""

    # JobServer's, read and written here (declared for the type checker).
    functions: dict[bytes, FunctionQueue]
    ready: set[bytes]
    wakes: Deadlines[Peer, FunctionQueue]  # woken workers that have not come to grab yet
    _has_work: Callable[[Peer], bool]  # a job among its functions' (Dispatch)
    # Awake workers left in their functions' sleepers lists (see the module docstring),
    # each with the functions whose lists do not hold it (dropped by _wake, or new).
    lingering: dict[Peer, set[bytes]]

    def pre_sleep(self, worker: Peer) -> None:
        """PRE_SLEEP: answer at once with NOOP if there is work, else wait for some.
        A draining worker is never woken: it sleeps until it is stopped."""
        if worker.draining:
            return
        if self._has_work(worker):
            worker.wake()
            return
        self.sleep(worker)

    def sleep(self, worker: Peer) -> None:
        """Put a worker to sleep that was found to have nothing to do in this same call
        (its grab came back empty): PRE_SLEEP's look for work would only repeat that one."""
        if worker.draining:
            return  # as in pre_sleep: it is never woken
        if worker.sleeping and _many(worker):
            # In every sleepers list of its functions already (can_do adds a new one): moved
            # to the warm end of each again, a repeated PRE_SLEEP walked them all, and any
            # local user with 4,096 functions on a connection held the server's loop 25 s
            # with 60 KB of them. Such a worker stays where it first went to sleep.
            return
        worker.sleeping = True
        functions = self.functions
        lingering = self.lingering
        if lingering:
            missing = lingering.pop(worker, None)
            if missing is not None and _many(worker):
                # Still in the other lists, where it first went to sleep. Left with fewer
                # functions since it woke, it is put in all of them, as any such worker.
                for function in missing:
                    fq = functions.get(function)
                    if fq is not None:
                        self._add_sleeper(fq, worker)
                return
        for function in worker.abilities:
            self._add_sleeper(functions[function], worker)

    @staticmethod
    def _add_sleeper(fq: FunctionQueue, worker: Peer) -> None:
        """The newest sleeper is woken first (_wake), unless it let a wake-up or a push pass
        its deadline: then it sleeps at the cold end, or as the newest again after each such
        late answer it would be picked for every job and each would wait the deadline out."""
        sleepers = fq.sleepers
        late = worker.late
        sleepers[worker] = late  # where it was put: _wake moves it if it is late since
        # A repeated PRE_SLEEP moves it too: it went to sleep last.
        sleepers.move_to_end(worker, last=not late)

    def _unsleep(self, worker: Peer) -> None:
        """Awake now (it grabs, or was woken): out of its sleepers lists, or, with more than
        RESETTLE_MAX functions, left in them (the module docstring)."""
        worker.sleeping = False
        if len(worker.abilities) > RESETTLE_MAX:  # _many, inline: every job wakes one
            self.lingering[worker] = set()
            return
        functions = self.functions
        for function in worker.abilities:
            fq = functions.get(function)
            if fq is not None:
                fq.sleepers.pop(worker, None)

    def _unlist(self, worker: Peer) -> None:
        """Out of every sleepers list of its functions, asleep or lingering."""
        worker.sleeping = False
        self.lingering.pop(worker, None)
        for function in worker.abilities:
            fq = self.functions.get(function)
            if fq is not None:
                fq.sleepers.pop(worker, None)

    def drain(self, worker: Peer) -> None:
        """farm's admin ``drain``: hand this worker no more jobs (its grabs get NO_JOB, a
        PRE_SLEEP is never answered); the jobs it holds run to their end. A wake-up it was
        sent and has not answered yet goes to another sleeper."""
        worker.draining = True
        self._unlist(worker)  # it never sleeps again: no entry left for _wake to meet
        self._pass_on_wake(worker)

    def _wake(self, fq: FunctionQueue) -> None:
        """One more job is runnable: wake one sleeping worker for it, no herd.

        A woken worker that has not come to grab within WAKE_DEADLINE (stopped,
        hung, swapping) holds nothing, but the job would wait on it while others
        sleep: then another sleeper is woken for it.
        """
        sleepers = fq.sleepers
        while sleepers:
            # The one that went to sleep last: its process is the warmest (caches, a core
            # not yet deep asleep), as web servers hand a request to the newest idle process.
            worker = next(reversed(sleepers))
            if not worker.sleeping or worker.late and not sleepers[worker] and _many(worker):
                self._pass_over(fq, worker)
                continue
            self._unsleep(worker)
            worker.wake()
            worker.woken = True
            self.wakes.add(worker, fq)
            return

    def _pass_over(self, fq: FunctionQueue, worker: Peer) -> None:
        """The newest entry of ``fq.sleepers`` is not to be woken now: a lingering worker's,
        awake (dropped, and put back when it sleeps again), or that of a sleeper of many
        functions late since it was put there (a lingering one was not moved, nor one whose
        pushed job was taken back while it slept): to the cold end now, as _add_sleeper
        would have put it.
        Each entry is passed over once for each time it was put there."""
        sleepers = fq.sleepers
        if worker.sleeping:
            sleepers[worker] = True
            sleepers.move_to_end(worker, last=False)
            return
        del sleepers[worker]
        missing = self.lingering.get(worker)
        if missing is not None:
            missing.add(fq.name)

    def _wake_deadline(self, worker: Peer, fq: FunctionQueue) -> None:
        if not worker.woken:
            return  # it came (or left): nothing waits on it
        worker.woken = False
        worker.late = True  # woken last from now on, until it comes in time (_add_sleeper)
        if fq.queued and self.functions.get(fq.name) is fq:
            log.info(
                "a woken worker did not come for its job within %gs; waking another",
                self.wakes.length,
            )
            self._wake(fq)

    def _pass_on_wake(self, worker: Peer) -> None:
        """A woken worker that will not come (its connection is gone, it drains, it gave up
        the function): wake another sleeper now for the job it was woken for, if it was
        woken. Its deadline is dropped with it; a wake-up dropped without this left the job
        waiting, with workers asleep, until some other job woke one."""
        fq = self.wakes.pop(worker)
        worker.woken = False
        if fq is not None and fq.queued and self.functions.get(fq.name) is fq:
            self._wake(fq)
