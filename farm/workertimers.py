"""The blocking worker's timers, between its loop's turns: how long its select may wait
(``_sleep_for``), a grab its server left unanswered past its deadline (``_mind_the_grab``),
and a sleep on a server that never sends the NOOP (``_recheck_sleeps``). A mixin of
:class:`farm.worker.Worker` on its links (farm.workerlinks), split off along this seam."""

from __future__ import annotations

from farm.protocol.worker import WorkerState
from farm.workerlinks import WorkerLinks
from farm.workerwire import readable_now

__all__ = ["SLEEP_RECHECK", "WorkerTimers"]

#: A server that let us sleep this long (seconds) is asked for a job again, with no NOOP:
#: gearmand wakes its sleepers when a job is submitted, not when a scheduled one (SUBMIT_JOB
#: _EPOCH) comes due, which then waited for the next submit of any job; libgearman's worker
#: of old grabbed again every 10 s (GEARMAN_WORKER_WAIT_TIMEOUT). A held grab never sleeps.
SLEEP_RECHECK = 10.0


class WorkerTimers(WorkerLinks):
    """The timed duties of ``Worker``'s loop (see the module docstring)."""

    def _sleep_for(self, now: float) -> float | None:
        waits = [s.retry_at - now for s in self._servers if s.sock is None and s.dial is None]
        waits += [
            s.asleep_since + SLEEP_RECHECK - now
            for s in self._servers
            if s.asleep_since is not None
        ]
        if self._grab_deadline is not None:
            waits.append(self._grab_deadline - now)
        return max(0.0, min(waits)) if waits else None

    def _recheck_sleeps(self, now: float) -> None:
        """Wake each session asleep for SLEEP_RECHECK, for the loop's next grab."""
        for server in self._servers:
            # Not one dropped for a grab it left unanswered, reconnected asleep on purpose
            # (``silent``): a grab each 10 s held the worker connect_timeout each time.
            asleep = server.session.state is WorkerState.SLEEPING
            if server.sock is None or server.silent or not asleep:
                server.asleep_since = None
            elif server.asleep_since is None:
                server.asleep_since = now
            elif now - server.asleep_since >= SLEEP_RECHECK:
                server.asleep_since = None
                server.session.wake()

    def _mind_the_grab(self, now: float) -> None:
        """Give up on a grab its server left unanswered past its deadline (the worker's
        ``connect_timeout``): a hung or SIGSTOPped server, whose kernel still takes our
        bytes, would hold the worker's one grab -- the other servers' jobs, and a
        ``stop()`` -- for as long as it hangs. Its connection is dropped (a job it assigns
        on waking goes back to its queue, as for any worker gone) and made again asleep.

        The deadline runs while a worker of several servers grabs (a live server answers
        a grab at once: NO_JOB or a job; no grab is held there), and from ``stop()`` on
        (the answer to RESET_ABILITIES that ends a held grab)."""
        server = self._grabbing
        if server is None:
            self._grab_deadline = None
            return
        if self._grab_deadline is None:
            if not (self._stopping or len(self._servers) > 1):
                return
            self._grab_deadline = now + self.connect_timeout
            self._push_the_grab(server)  # behind an answer the server is still reading
        if now >= self._grab_deadline:
            # Its answer may wait unread: this process stopped past the deadline (SIGSTOP, a
            # paused VM) had its select come back empty, and the server was dropped as hung.
            if server.sock is not None and readable_now(server.sock):
                return  # read by this turn's select
            server.silent = True
            self._lost(
                server,
                "did not answer a grab in time (its connect_timeout, past an answer's backlog)",
            )
