"""Who runs what: workers' abilities, sleeping and waking, grabs, timeouts and requeues,
and background jobs held for their epoch time until it comes.

A mixin of :class:`farm.server.jobs.JobServer` (split off along the worker's
side of the model; submitting, ends and admin stay there). Which sleeper a job
wakes is farm/server/sleepers.py; what a worker registers, farm/server/abilities.py.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator

from farm.logrepeats import Brief
from farm.server.abilities import INDEX_MIN, Abilities
from farm.server.deadlines import Deadlines
from farm.server.queues import (
    HIGH,
    LOW,
    NORMAL,
    FunctionQueue,
    Job,
    Outcome,
    Peer,
    Timer,
)
from farm.server.settings import ServerOptions

__all__ = ["Dispatch", "MAX_EXPIRED", "WAKE_DEADLINE"]

log = logging.getLogger("farm.server")
#: Timeouts and poison jobs on TCP workers: once each 10 s at most, as any local user may
#: register a worker over TCP and make thousands a second (the farm's own, on the Unix
#: socket, are each logged). The metrics and `show poison jobs` count every one.
tcp_timeouts, tcp_poison = Brief(log), Brief(log, level=logging.ERROR)

#: Timed-out handles remembered per worker connection, to drop their late answers.
MAX_EXPIRED = 64
#: CAN_DO_TIMEOUT lengths kept before those with no running job are dropped.
MAX_TIMEOUT_LENGTHS = 64
#: Seconds a supervised server waits before it calls a job whose worker died poison: its
#: supervisor's death (which kills the workers too) may not have reached it yet.
ORPHAN_GRACE = 0.2
#: How long a woken worker has to come and grab before another sleeper is woken instead
#: (the default of the server's --wake-deadline, where it is written).
WAKE_DEADLINE = ServerOptions.wake_deadline
#: The longest the epoch timer sleeps before it reads the wall clock again. Its delay runs on
#: the monotonic clock, which neither an NTP step nor a suspend moves: armed for the whole
#: wait, a job due in an hour still waited that hour after a step of the clock an hour on.
EPOCH_RECHECK = 1.0


def _named(job: Job) -> dict[str, str]:
    """A log record's ``job`` and ``function`` (farm.logs' JSON fields), in that order. Names
    are bytes, not always UTF-8 (a Latin-1 PHP worker's): such bytes are written \\xNN."""
    return {
        "job": job.handle.decode("utf-8", "backslashreplace"),
        "function": job.function.decode("utf-8", "backslashreplace"),
    }


class Dispatch(Abilities):
    """The worker half of the job model (see the module docstring)."""

    # JobServer's, read and written here (declared for the type checker).
    functions: dict[bytes, FunctionQueue]
    ready: set[bytes]
    call_later: Callable[[float, Callable[[], None]], Timer] | None
    stopping: bool
    job_retries: int
    poison: deque[tuple[bytes, bytes, bytes]]
    on_idle: Callable[[], None] | None
    wakes: Deadlines[Peer, FunctionQueue]  # woken workers that have not come to grab yet
    timeouts: dict[float, Deadlines[Job, Peer]]  # running jobs' CAN_DO_TIMEOUTs, by length
    function: Callable[[bytes], FunctionQueue]
    running_count: Callable[[], int]
    _end: Callable[..., None]
    _forget: Callable[[Job], None]
    _store_retries: Callable[[Job], None]
    finish: Callable[..., None]
    jobs: dict[bytes, Job]
    epoch_heap: list[tuple[float, int, Job]]  # background jobs held for their epoch time
    _epoch_timer: Timer | None
    parent_pid: int | None  # the supervisor's (--parent-pid)
    _seq: Iterator[int]  # arrival order, which _best_job compares across functions

    def _best_job(self, worker: Peer) -> Job | None:
        """Highest priority first, then oldest, across all the worker's functions."""
        functions, abilities, ready = self.functions, worker.abilities, self.ready
        if not ready:
            return None
        # The functions it can do that have work, walking whichever set is smaller; most
        # workers have one function, and then there is nothing to walk. filter, not a
        # comprehension: one made cells of abilities and ready (a closure's), every grab.
        if len(abilities) == 1:
            names = list(abilities) if next(iter(abilities)) in ready else []
        elif len(abilities) > INDEX_MIN:
            names = list(self.with_work[worker])  # its index (farm.server.abilities)
        elif len(abilities) > len(ready):
            names = list(filter(abilities.__contains__, ready))
        else:
            names = list(filter(ready.__contains__, abilities))
        if len(names) < 2:
            if not names:
                return None
            fq = functions[names[0]]
            counts = fq.counts  # a function in ``ready`` has a live job of some priority
            return fq.head(HIGH if counts[HIGH] else NORMAL if counts[NORMAL] else LOW)
        for priority in (HIGH, NORMAL, LOW):
            best: Job | None = None
            for name in names:
                fq = functions[name]
                if fq.counts[priority]:
                    job = fq.head(priority)
                    if job is not None and (best is None or job.seq < best.seq):
                        best = job
            if best is not None:
                return best
        return None

    def _has_work(self, worker: Peer) -> bool:
        """Whether _best_job would find one, without looking for the best: a PRE_SLEEP takes
        none, and with a job in each of 4,096 functions of its own, each one walked them all
        (three times, for a low one) only to answer NOOP."""
        ready = self.ready
        if not ready:
            return False
        abilities = worker.abilities
        if len(abilities) == 1:
            return next(iter(abilities)) in ready
        if len(abilities) > INDEX_MIN:
            return bool(self.with_work[worker])
        if len(abilities) > len(ready):
            return any(n in abilities for n in ready)
        return any(n in ready for n in abilities)

    def grab(self, worker: Peer) -> Job | None:
        """GRAB_JOB*: hand the worker its next job, or None for NO_JOB."""
        if worker.woken:
            worker.woken = False
            worker.late = False  # it came in time
            self.wakes.discard(worker)
        if worker.sleeping:
            self._unsleep(worker)
        if worker.draining:
            return None
        job = self._best_job(worker)
        if job is None:
            return None
        fq = self.functions[job.function]
        fq.pop(job)
        fq.running += 1
        now = time.monotonic()
        fq.stats.wait.observe(now - job.since)
        job.since = now
        job.worker = worker
        worker.running[job.handle] = job
        timeout = worker.abilities.get(job.function, 0.0)
        if timeout and self.call_later is not None:
            expiry = self.timeouts.get(timeout)
            if expiry is None:
                expiry = self._timeout_deadlines(timeout)
            expiry.add(job, worker)
            job.expiry = expiry
        return job

    def _timeout_deadlines(self, timeout: float) -> Deadlines[Job, Peer]:
        """The deadlines of jobs run under CAN_DO_TIMEOUT ``timeout``: one timer per length in
        use, not a loop timer made and cancelled per job. Lengths nothing waits on are dropped
        once many are kept, as workers may register any number of different timeouts."""
        if len(self.timeouts) >= MAX_TIMEOUT_LENGTHS:
            for length, deadlines in list(self.timeouts.items()):
                if not deadlines:
                    del self.timeouts[length]
                    if deadlines.timer is not None:
                        # Its idle firing would keep it alive for up to its length (a year).
                        deadlines.timer.cancel()
        expiry = self.timeouts[timeout] = Deadlines(timeout, self._expire, self.call_later)
        return expiry

    def _expire(self, job: Job, worker: Peer) -> None:
        """CAN_DO_TIMEOUT ran out: the job fails (gearmand 1.1 would requeue it forever)."""
        length = job.expiry.length if job.expiry is not None else 0
        job.expiry = None
        worker.catch_up()  # its answer may be read already, behind its news (READ_SLICE)
        if job.worker is worker and worker.running.get(job.handle) is job:
            # Names are bytes on the wire, not always UTF-8 (a Latin-1 PHP worker): a strict
            # decode raised here, in the timer, and the job was never failed.
            named = _named(job)
            say = tcp_timeouts if worker.tcp else log.warning
            say("job %s (%s) timed out on its worker", *named.values(), extra=named)
            self._drop_answers(worker, job)
            self.functions[job.function].stats.timed_out[job.priority] += 1
            why = f"it ran past its worker's timeout of {length:g} s (CAN_DO_TIMEOUT)"
            self.finish(worker, job, Outcome.FAIL, why.encode())

    def take_back(self, worker: Peer, job: Job) -> bool:
        """A job pushed to a worker's held grab that it did not accept in time: it goes back
        to the head of its queue for another worker, with no retry counted (it never
        started); should the worker run it after all, its answers are dropped. False if the
        worker no longer held it (nothing taken back)."""
        if job.worker is not worker or worker.running.get(job.handle) is not job:
            return False
        self._drop_answers(worker, job)
        self._stop_running(worker, job)
        worker.late = True  # as a woken worker past its deadline (Sleepers._add_sleeper)
        fq = self.function(job.function)
        fq.push(job, front=True)
        self._wake(fq)
        if self.on_idle is not None and not self.running_count():
            self.on_idle()  # as _requeue: a graceful stop waited for it, and nothing runs now
        return True

    def _give_back(self, worker: Peer, job: Job) -> None:
        """A job assigned to a worker after its CANT_DO or RESET_ABILITIES left, which it
        lets go unrun (OPTION_REQ give-back, docs/held-grab.md): as a push taken back, to
        the head of its queue with no retry counted, its client told nothing; what the
        worker sends for it after all is dropped."""
        self._drop_answers(worker, job)
        self._stop_running(worker, job)
        if not job.clients and not job.background:  # as _requeue: nobody waits for it
            self.functions[job.function].stats.dropped[job.priority] += 1
            self._forget(job)
            return
        fq = self.function(job.function)
        fq.push(job, front=True)
        self._wake(fq)
        if self.on_idle is not None and not self.running_count():
            self.on_idle()  # a graceful stop waits for running jobs, and none runs now

    @staticmethod
    def _drop_answers(worker: Peer, job: Job) -> None:
        """Remember that ``worker`` no longer holds ``job``: what it sends for it is dropped.
        Counted: a job taken back from one worker twice (pushed to it again, late again) may
        be run and answered by it twice."""
        expired = worker.expired
        expired[job.handle] = expired.get(job.handle, 0) + 1
        if len(expired) > MAX_EXPIRED:
            del expired[next(iter(expired))]

    def _requeue(self, worker: Peer, job: Job) -> None:
        """The worker let go of a running job without ending it: queue it again (last of its
        priority), or fail it."""
        self._stop_running(worker, job)
        if self.stopping or self.orphaned():
            # A planned stop, or the supervisor gone (its workers die with it): no job's
            # fault, and nothing runs it here again; the store keeps background jobs.
            return
        if not job.clients and not job.background:
            # Nobody waits for it any more: nothing to retry or fail, but it ends here.
            self.functions[job.function].stats.dropped[job.priority] += 1
            self._forget(job)
            return
        job.numerator = job.denominator = b"0"  # its progress was the dead worker's (gearmand)
        job.retries += 1  # a planned kill counts too: job_retries = 1 promises at most once
        if self.job_retries and job.retries >= self.job_retries:
            if self.parent_pid is not None and not worker.killed and self.call_later is not None:
                # The supervisor's death kills its workers and stops this server at once, and
                # a worker's end can be read here before this server is told (its parent
                # changes a moment later): a poison verdict waits that moment out.
                tcp = worker.tcp  # a connection gone is not marked TCP by then
                self.call_later(ORPHAN_GRACE, lambda: self._verdict(worker, job, tcp=tcp))
                return
            self._out_of_retries(worker, job, tcp=worker.tcp)
            return
        # Behind the jobs of its priority that came meanwhile, as gearmand queues it again: at
        # the head, a job that kills each worker that runs it (a crash, a PHP worker's return
        # of GEARMAN_LOST_CONNECTION) was run again at once, every time, and starved the rest
        # of its function for as long as its client waited (with -j 0, a background one for
        # ever), where gearmand runs them between its tries.
        job.seq = next(self._seq)
        fq = self.function(job.function)
        # Counted here, as it goes back: the last death fails it (farm_jobs_failed_total), and
        # counted as a retry too it read as a run that never came (retried 2 with -j 2).
        fq.stats.retried[job.priority] += 1
        fq.push(job)
        self._wake(fq)
        if job.store_id:
            self._keep_retries(job)
        if self.on_idle is not None and not self.running_count():
            self.on_idle()  # a graceful stop waits for running jobs, and none runs now

    def _keep_retries(self, job: Job) -> None:
        """Write a stored job's count of worker deaths, or a poison job got job_retries more
        runs after each restart. A supervised server first waits ORPHAN_GRACE, as for a
        poison verdict: its supervisor's death kills the workers too, no fault of the job,
        and the count kept would outlive the moment."""
        if self.parent_pid is None or self.call_later is None:
            self._store_retries(job)
            return

        def later() -> None:
            if not (self.stopping or self.orphaned()):
                self._store_retries(job)

        self.call_later(ORPHAN_GRACE, later)

    def _verdict(self, worker: Peer, job: Job, *, tcp: bool) -> None:
        """A job out of retries, ORPHAN_GRACE after its last worker died: failed, unless
        this server is stopping or orphaned by now (then kept, as _requeue keeps it)."""
        if self.jobs.get(job.handle) is not job or job.worker is not None or job.queued:
            return  # ended, forgotten or taken up again meanwhile
        if self.stopping or self.orphaned():
            return
        self._out_of_retries(worker, job, tcp=tcp)

    def _out_of_retries(self, worker: Peer, job: Job, *, tcp: bool) -> None:
        """Fail a job whose last worker died (``tcp``: that worker was a TCP peer)."""
        named = _named(job)
        handle, function = named.values()
        if worker.killed:
            why = (
                "its worker was stopped past its grace (farm stop, a deploy, a scale-down),"
                f" and job_retries = {self.job_retries} allows no other run"
            )
            # Its supervisor said it kills it (a drain past its grace: farm stop, a deploy,
            # a scale-down): no poison job, but one that may run only so many times.
            log.warning(
                "job %s: function %s: its worker was stopped past its grace; failed, as"
                " job_retries = %d allows no other run",
                handle,
                function,
                self.job_retries,
                extra=named,
            )
        else:
            times = "" if job.retries == 1 else f" {job.retries} times"  # a worker each
            why = f"its worker died running it{times} (job_retries = {self.job_retries})"
            (tcp_poison if tcp else log.error)(
                "poison job %s: function %s unique %r failed after %d attempts",
                handle,
                function,
                job.unique.decode("utf-8", "backslashreplace"),
                job.retries,
                extra=named,
            )
            self.poison.append((job.handle, job.function, job.unique))
        self._end(job, Outcome.FAIL, why.encode())

    def orphaned(self) -> bool:
        """Whether the supervisor that started this server is gone (a SIGTERM is on its
        way here, and its workers are dying with it)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _stop_running(self, worker: Peer, job: Job) -> None:
        worker.running.pop(job.handle, None)
        job.worker = None
        worker.let_go(job)  # a client not reading holds a worker up for its job only
        self.functions[job.function].running -= 1
        if job.expiry is not None:
            job.expiry.discard(job)
            job.expiry = None

    # -- the epoch timer ----------------------------------------------------

    def _arm_epoch_timer(self) -> None:
        if self.call_later is None or not self.epoch_heap:
            return
        if self._epoch_timer is not None:
            self._epoch_timer.cancel()
        delay = min(max(0.0, self.epoch_heap[0][0] - time.time()), EPOCH_RECHECK)
        self._epoch_timer = self.call_later(delay, self.release_due_epoch_jobs)

    def release_due_epoch_jobs(self) -> None:
        """Move epoch jobs whose time has come into their queues and wake workers."""
        self._epoch_timer = None
        now = time.time()
        while self.epoch_heap and self.epoch_heap[0][0] <= now:
            _, _, job = heapq.heappop(self.epoch_heap)
            if job.handle not in self.jobs:
                continue  # cancelled while held
            fq = self.function(job.function)
            fq.scheduled[job.priority] -= 1
            fq.push(job)
            self._wake(fq)
        self._arm_epoch_timer()
