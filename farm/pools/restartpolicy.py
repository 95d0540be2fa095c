"""The restart policy, one for worker slots and the local job server alike.

How long to wait before the next start of a place whose process ended (``crash_delay``,
``boot_delay``), when a place is failing, and when a healthy run clears its history
(``RestartHistory``). Nothing here does I/O or knows what a process is: ``Slot``
(farm.pools.slots) and ``LocalServer`` (farm.pools.localserver) are each one.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BACKOFF_CAP",
    "FAILING_AFTER",
    "FREE_JOB_CRASHES",
    "HEALTHY_AFTER",
    "RestartHistory",
    "boot_delay",
    "crash_delay",
]

#: A process that lived this long was healthy: its slot's failure count starts over.
HEALTHY_AFTER = 60.0
#: Longest wait between restarts of a crashing or failing slot.
BACKOFF_CAP = 30.0
#: Consecutive crashes after which a slot is reported as failing.
FAILING_AFTER = 3
#: Deaths in a job (not the worker's fault: the server bounds a job's tries with
#: job_retries) restarted at once and not counted as failures, per healthy run; past
#: them (job_retries = 0 and a job that kills every worker) they count and back off.
FREE_JOB_CRASHES = 20


def crash_delay(failures: int) -> float:
    """Wait before restart number ``failures`` of a crashing slot: 0, 0.5, 1, 2 ... 30 s."""
    if failures <= 1:
        return 0.0
    return min(BACKOFF_CAP, 0.5 * 2.0 ** (failures - 2))


def boot_delay(failures: int) -> float:
    """Wait after a boot failure: 2, 4, 8 ... 30 s, so a broken target is no hot loop."""
    return min(BACKOFF_CAP, 2.0 ** max(1, failures))


@dataclass(eq=False, kw_only=True)
class RestartHistory:
    """The one restart policy, for worker slots and the local job server alike.

    A process that lived ``HEALTHY_AFTER`` seconds clears the history; each
    unplanned exit counts a failure and waits ``crash_delay`` (``boot_delay``
    after a boot failure) before the next start; ``FAILING_AFTER`` failures in a
    row, or one boot failure, mark the place failing.
    """

    failures: int = 0  # consecutive unplanned exits since the last healthy run
    restarts: int = 0  # ends nobody asked for (crash, kill, recycle); not scale or deploy
    next_start: float = 0.0  # monotonic time before which no new process starts
    failing: bool = False
    last_exit: str = ""
    boot_error: str = ""  # why the last process failed to boot, as it said; "" if it did not
    job_crashes: int = 0  # deaths in a job since the last healthy run (FREE_JOB_CRASHES)

    def lived(self, seconds: float) -> None:
        """A process of this place ran ``seconds``: long enough clears the history."""
        if seconds >= HEALTHY_AFTER:
            self.failures, self.failing, self.job_crashes = 0, False, 0

    def failed(self, now: float, *, boot: bool = False) -> float:
        """An unplanned exit (or a start that failed): the delay before the next start."""
        self.failures += 1
        if boot:
            self.failing, delay = True, boot_delay(self.failures)
        else:
            self.failing, delay = self.failures >= FAILING_AFTER, crash_delay(self.failures)
        self.next_start = now + delay
        return delay

    def planned(self, now: float) -> float:
        """An exit the supervisor asked for or expected: start again at once."""
        self.next_start = now
        return 0.0
