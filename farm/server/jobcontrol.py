"""What is done to jobs outside their course: the durable store's jobs queued again at start
(``replay``), jobs queued once the store committed them (``committed``), a new background
job's row staged (``_store_add``), a job the store could not keep counted and forgotten
(``refused_by_store``, ``unstore``), and the operator's admin commands (``cancel job``,
``drop function``). A mixin of :class:`farm.server.jobs.JobServer`, split off along this
seam: the store's side of a job and the operator's; of a job's course only the staging.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from farm.protocol.kinds import Priority
from farm.server.metrics import MAX_FUNCTIONS, STORE, FunctionStats
from farm.server.queues import FunctionQueue, Job, Outcome, Peer
from farm.server.store import SQLiteStore, StoreError

__all__ = ["JobControl"]


#: Jobs replayed between two calls of replay's ``progress``: about 30 ms of work.
REPLAY_STEP = 1000


class JobControl:
    """Replay, unstore, cancel and drop (see the module docstring)."""

    # JobServer's, read and written here (declared for the type checker).
    store: SQLiteStore | None
    jobs: dict[bytes, Job]
    functions: dict[bytes, FunctionQueue]
    other_retired: FunctionStats
    uniques: dict[tuple[bytes, bytes, bool], Job]
    awaiting: dict[bytes, Job]
    epoch_heap: list[tuple[float, int, Job]]
    submit: Callable[..., Job]
    function: Callable[[bytes], FunctionQueue]
    _wake: Callable[[FunctionQueue], None]
    _arm_epoch_timer: Callable[[], None]
    _unqueue: Callable[[Job], None]
    _end: Callable[..., None]
    _forget: Callable[[Job], None]
    free_entry: Callable[[bytes], FunctionQueue]
    _drop_answers: Callable[[Peer, Job], None]
    _stop_running: Callable[[Peer, Job], None]

    def replay(self, progress: Callable[[int], None] | None = None) -> int:
        """Queue every job of the durable store again (at start); how many. ``progress`` is
        told the count so far every REPLAY_STEP jobs (a large store takes seconds)."""
        if self.store is None:
            return 0
        count = 0
        for row in self.store.load():
            if progress is not None and count % REPLAY_STEP == 0 and count:
                progress(count)
            job = self.submit(
                None,
                row.function,
                row.unique,
                row.data,
                priority=Priority(row.priority),
                background=True,
                reducer=row.reducer,
                when=row.when,
                store_id=row.id,
                local=bool(row.local),
            )
            if job.store_id != row.id:
                self.store.remove(row.id)  # coalesced with an earlier row
            else:
                job.retries = row.retries  # the deaths of its workers before this start
                if row.created and job.queued:
                    # Waiting since it became due, not since this start (`farm jobs`' age,
                    # the queue-wait histogram): its submit, or its epoch time, when a live
                    # server pushed it. One not due yet is not queued: its since is set when
                    # it is pushed, and aged here it read as the clock's whole count.
                    job.since -= max(0.0, time.time() - max(row.created, row.when))
            count += 1
        return count

    def refused_past_max_functions(self, priority: int) -> None:
        """A submit naming a function the server does not hold was refused past
        --max-functions: counted under the metrics' ``other``, as it has no entry."""
        self.other_retired.refused[MAX_FUNCTIONS][priority] += 1

    def refused_by_store(self, handle: bytes, priority: int) -> None:
        """A background submit at ``priority`` of this job was refused (QUEUE_ERROR) because
        its commit to the store failed: counted before ``unstore`` forgets the job (the
        metrics). Under the submit's priority, not the job's (they differ when it joined a
        job of another), as a refusal at the submit is (``JobServer._store_add``)."""
        job = self.jobs.get(handle)
        fq = None if job is None else self.functions.get(job.function)
        if job is not None and fq is not None:
            fq.stats.refused[STORE][priority] += 1

    def _store_retries(self, job: Job) -> None:
        """Stage a stored job's count of worker deaths (Dispatch._keep_retries says when)."""
        if job.store_id and self.store is not None and self.jobs.get(job.handle) is job:
            self.store.retried(job.store_id, job.retries)

    def commit_store(self) -> list[bytes]:
        """Commit the store here and now, and take its outcome in: the handles refused
        (a JobServer driven without a hub: tests, tools; the hub commits in a thread)."""
        assert self.store is not None
        batch = self.store.take()
        self.store.write(batch)
        failed = self.store.settle(batch)
        self.committed(batch.handles, frozenset(failed))
        return failed

    def committed(self, handles: list[bytes], failed: frozenset[bytes]) -> None:
        """The store wrote a batch for these submits, but ``failed``'s: queue the new jobs
        (for their epoch, when not due), forget the refused ones nobody else waits on."""
        awaiting = self.awaiting
        now = time.time()
        epoch = False
        for handle in handles:
            job = awaiting.pop(handle, None)
            if handle in failed:
                if job is not None and not job.clients:  # nobody else waits on it
                    self.function(job.function).scheduled[job.priority] -= 1
                    job.store_id = 0  # no row to delete
                    self._forget(job)
                    continue
                self.unstore(handle)  # a foreground client that joined it keeps it
            if job is None or self.jobs.get(handle) is not job:
                continue  # it joined an older job, or was cancelled while written
            fq = self.function(job.function)
            if job.when > now:
                heapq.heappush(self.epoch_heap, (job.when, job.seq, job))
                epoch = True  # counted as scheduled still
            else:
                fq.scheduled[job.priority] -= 1
                fq.push(job)
                self._wake(fq)
        if epoch:
            self._arm_epoch_timer()

    def unstore(self, handle: bytes) -> Job | None:
        """The store could not keep this job: forget it without telling anyone."""
        job = self.jobs.get(handle)
        if job is None:
            return None
        job.store_id = 0
        if job.clients:
            job.background = False  # foreground clients still wait on it: keep it, not durable
            return job
        if job.worker is None:
            self._unqueue(job)
            self._forget(job)
        return job

    def _store_add(self, job: Job, priority: int) -> int:
        """Stage ``job`` in the store for a background submit at ``priority``; StoreError
        (counted as that submit refused) while the store fails."""
        assert self.store is not None
        try:
            return self.store.add(
                job.handle,
                job.function,
                job.unique,
                job.data,
                job.priority,
                job.reducer,
                job.when,
                job.local,
            )
        except StoreError:
            self.function(job.function).stats.refused[STORE][priority] += 1
            raise

    # -- the operator's ------------------------------------------------------

    def cancel(self, handle: bytes) -> bool:
        """Remove a queued job; a running one (as gearmand) fails now: its clients get
        WORK_FAIL, and it is neither stored nor run again. True when there was one."""
        job = self.jobs.get(handle)
        if job is None:
            return False
        worker = job.worker
        if worker is None:
            self._unqueue(job)
        else:
            # Ended here as a timeout ends it: the worker runs on, and what it still sends
            # for the job is dropped unanswered. Left to that answer, the job was counted
            # in the metrics as whatever the worker said (mostly completed) while its
            # clients were told it failed.
            self._drop_answers(worker, job)
            self._stop_running(worker, job)
        self._end(job, Outcome.FAIL, b"an operator cancelled it (admin: cancel job)")
        return True

    def drop_function(self, name: bytes) -> bool:
        fq = self.functions.get(name)
        if fq is None or fq.workers or fq.running:
            return False
        # As gearmand: the operator asked, so the function's waiting jobs go with it.
        for job in [j for j in self.jobs.values() if j.function == name]:
            self._unqueue(job)
            self._end(job, Outcome.FAIL, b"an operator dropped its function (admin: drop function)")
        # Its idle record goes with it: left, a later `create function` of the name made
        # an entry that looked unused, which room_for_new then freed.
        self.free_entry(name)
        return True
