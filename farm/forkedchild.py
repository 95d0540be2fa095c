"""A child that a job forked and that comes back into the worker exits there.

A job's function may fork(); its child should end with ``os._exit()``. One that returns
from the function, or raises out of it (``sys.exit()`` included), is back in the worker's
loop with the worker's connections: it would answer the job in the parent's stead, then
read and write the same socket as the parent, and the worker would wedge for every later
caller of the farm (the supervisor knows nothing of such a child, and it outlives the
worker). ``ProcessPoolExecutor``'s child does the same and hangs the pool's shutdown;
multiprocessing ends a child when its target returns. So such a child ends here, with the
status Python would have given it, and only the worker answers the job.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger("farm.worker")

#: One more in each child forked from this process (os.fork(), multiprocessing; not a C
#: library's own fork()): read before a job and compared after it, where two getpid() system
#: calls per job cost a worker about a tenth of its CPU on tiny calls.
forks = 0


def _count_fork() -> None:
    global forks
    forks += 1


os.register_at_fork(after_in_child=_count_fork)


def leave_if_forked(before: int, job: object, raised: BaseException | None) -> None:
    """Exit here (``exit_child``) if this process is a child forked since ``forks`` read
    ``before``: around a job's function, ``raised`` being what came out of it (None: it
    returned). Inline checks, not a context manager: this runs for every call of a batch."""
    if forks != before:
        exit_child(job, raised)


def exit_child(job: object, raised: BaseException | None) -> NoReturn:
    """End this process, a child that ``job`` forked and that came back out of the job's
    function, having ``raised`` that (None: it returned): ``SystemExit``'s code, 1 for any
    other exception (its traceback logged, as Python prints one), else 0."""
    status = _status(raised)
    log.warning(
        "job %s: process %d, which the job forked, came back out of it (%s) instead of "
        "ending with os._exit(): it exits (status %d); the worker answers the job",
        str(job),
        os.getpid(),
        "returned" if raised is None else f"raised {type(raised).__name__}",
        status,
        exc_info=None if raised is None or isinstance(raised, SystemExit) else raised,
    )
    for stream in (sys.stdout, sys.stderr):  # what the child printed: os._exit() drops buffers
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream: nothing more to save
    os._exit(status)


def _status(raised: BaseException | None) -> int:
    if raised is None:
        return 0
    if isinstance(raised, SystemExit):
        code = raised.code
        if code is None:
            return 0
        return code & 0xFF if isinstance(code, int) else 1  # sys.exit("text") is 1, as Python
    return 1
