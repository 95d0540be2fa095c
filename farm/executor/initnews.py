"""What a job's initializer news prove: when workers dying in the executor's initializer
break the executor (the caller's end of payload.INIT_NEWS).

A worker that runs the executor's initializer for a job tells the caller as it starts
(INIT_STARTS) and once it returned (INIT_ENDS); a worker that ran it already for an
earlier call sends nothing (no packet per call). A start with no end is a worker that
died in the initializer only if something came after it: another start (the server's
retry of the job on another worker) or the job's failure. Even then the death may not
be the initializer's doing -- the supervisor's SIGKILL after graceful_timeout, the OOM
killer, kill_rss_mb may end a worker in a healthy, slow initializer -- so one such
death is retried (or fails its call with WorkerLost) as any worker's death is, and the
executor breaks once *two* workers of the job died in the initializer, as an
initializer that kills every worker that runs it does.
"""

from __future__ import annotations

from typing import Any

from farm.errors import WorkerLost
from farm.executor.payload import INIT_ENDS, INIT_STARTS, describe

__all__ = ["InitializerFailed", "InitWatch"]

#: Workers of one job dead in the initializer that break the executor.
DEATHS_THAT_BREAK = 2


class InitializerFailed(Exception):
    """Raised in the pump thread when a worker reports that the executor's initializer
    failed: the pump breaks, as ProcessPoolExecutor breaks when a child's initializer fails."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe(error))
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        # Made again from its message, it described that: "str: ValueError: ..." (farm.errors)
        return type(self), (self.error,), self.__dict__


class InitWatch:
    """One job's initializer news: whether a worker is in the initializer for it, and how
    many of its workers died there (those the caller has proof of)."""

    __slots__ = ("initializing", "deaths")

    def __init__(self) -> None:
        #: A worker said it started the executor's initializer, and not yet that it ended.
        self.initializing = False
        #: Workers that started the initializer for this job and were gone before its end.
        self.deaths = 0

    def heard(self, mark: bytes, handle: str) -> None:
        """A worker starts (INIT_STARTS) or ended (INIT_ENDS) the initializer. A start while
        one is open is the server's retry: the worker that sent the open one died in the
        initializer (its end would have come first, on the same connection)."""
        if mark == INIT_STARTS:
            if self.initializing:
                self.deaths += 1
                if self.deaths >= DEATHS_THAT_BREAK:
                    raise InitializerFailed(_died_initializing(handle, self.deaths))
            self.initializing = True
        elif mark == INIT_ENDS:
            self.initializing = False

    def lost(self, handle: str) -> None:
        """The job failed for a lost worker (JobFailed). With a start still open, the worker
        that sent it died in the initializer (the job's last worker, or one before a worker
        that had run the initializer already, sent nothing, and died in the call): with a
        death there before it, that is two, and InitializerFailed breaks the executor;
        otherwise the call fails with WorkerLost, as for any dead worker."""
        if self.initializing and self.deaths + 1 >= DEATHS_THAT_BREAK:
            raise InitializerFailed(_died_initializing(handle, self.deaths + 1))


def _died_initializing(handle: str, deaths: int) -> WorkerLost:
    return WorkerLost(
        f"{deaths} workers running job {handle} died in the executor's initializer"
        " (os._exit, a signal or a crash there)"
    )
