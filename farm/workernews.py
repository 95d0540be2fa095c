"""What a worker sends while a job runs, from the job's thread or another: its news (status,
data, warning: ``Job.send_*``) and ``abandon``, a watchdog's WORK_FAIL. Both write under the
send lock, and only while the job is still in hand on its server (``_holds``): an answer
raced by another thread is not sent twice. A mixin of :class:`farm.worker.Worker`, split
off along this seam.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from farm.protocol import ProtocolError
from farm.protocol.worker import WorkerSession, WorkerState
from farm.workerjob import Job
from farm.workerlinks import ServerLink, WorkerLinks
from farm.workerwire import peer_gone

__all__ = ["WorkerNews"]

log = logging.getLogger("farm.worker")

_WORKING = WorkerState.WORKING


class WorkerNews(WorkerLinks):
    """A job's news and its abandon (see the module docstring): on the worker's links."""

    def abandon(self, job: Job, why: str) -> bool:
        """Fail the job in hand now (WORK_WARNING ``why`` and a newline, then WORK_FAIL) from
        another thread, and send that at once.

        For a watchdog whose process exits next (farm.pools.workerproc's kill_rss_mb): the
        job's code still holds the thread that runs it, and the server, told WORK_FAIL
        before the connection drops, fails the job rather than handing it out again.
        Logs ``job HANDLE failed: WHY``. False, and nothing is sent, if ``job`` is no longer
        in hand: it has just ended (its answer leaves as usual) or its server is gone. False
        too if the WORK_FAIL did not all leave: its connection was lost first (a server that
        took none of what waited before it, the job's large data, for ``connect_timeout``).
        """
        server = job._server
        with self._send_lock:
            if not self._holds(server, job):
                return False
            try:
                # Why, first: WORK_FAIL alone tells the client nothing (a farm.Executor's
                # WorkerLost says this, where it could only list what may have happened).
                # A line, its newline sent: the gearman CLI writes a warning to stderr as it
                # comes, and its "Job failed" ran on after "worker exits" on the same line.
                line = why.encode("utf-8", "backslashreplace") + b"\n"
                server.session.send_warning(line)
                server.session.fail()
            except ProtocolError:  # the job's own thread answered it just now
                return False
            fields = {"function": job.function, "job": job.handle}  # farm.logs' fields
            log.error("job %s failed: %s", job.handle, why, extra=fields)
            rest = self._flush_locked(server)
            left = server.sock is not None  # a failed write lost the connection
        if rest is not None:  # bounded, and not under the lock the job's own thread may need
            # Its outcome, not True: a watchdog told True exits believing the server failed
            # the job, where its WORK_FAIL was lost with a hung server's connection.
            left = self._write_rest(server, rest)
        # No _run_unsent_due: a job in hand leaves no answer's hook to lose here, and one
        # the worker's thread lost is its to run (Job.unsent runs in the worker's thread).
        return left

    def _send_news(self, job: Job, queue: Callable[[WorkerSession], None]) -> bool:
        """A job's news (status, data, warning) from its function, while it runs; whether
        it was written (not: the job ended, or its server went away: nobody listens)."""
        server = job._server
        with self._send_lock:  # abandon() may fail this job from another thread
            if not self._holds(server, job):
                return False
            rest = None
            if server.sock is not None and peer_gone(server.sock):
                # Over TCP a write to a killed server succeeds: send_data would say True
                # and a batch part's file leave job.unsent. One poll(), news being rare.
                self._lost(server, "closed the connection while a job ran", locked=True)
            else:
                queue(server.session)
                rest = self._flush_locked(server)
            left = server.sock is not None  # a failed write lost the connection
        if rest is not None:  # large data: the rest bounded, the lock free meanwhile
            left = self._write_rest(server, rest)
        self._run_unsent_due()
        return left

    @staticmethod
    def _holds(server: ServerLink, job: Job) -> bool:
        session = server.session
        return session.state is _WORKING and session.handle == job.handle
