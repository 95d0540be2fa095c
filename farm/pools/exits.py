"""How a worker process ended: its exit codes' meaning, in words (``describe_exit``) and
as the cause farm_pool_restarts_total counts (``exit_cause``), and why the supervisor
killed one (``undrained``, ``cut_off``). Split from farm.pools.slots,
which applies them to a slot's restart history; a small module of its own, so that a
worker process loads its exit codes without the slots' (workerproc)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Protocol

__all__ = [
    "EXIT_DRAINED",
    "EXIT_BOOT_ERROR",
    "EXIT_RECYCLE",
    "EXIT_RSS_KILLED",
    "EXIT_CAUSES",
    "Exits",
    "describe_exit",
    "exit_cause",
    "may_answer_server_loss",
    "undrained",
    "cut_off",
    "LINGERED",
    "unexited",
    "lingered",
]

# Exit codes of farm.pools.workerproc, like gunicorn's: the supervisor tells an
# ordered exit from a crash, and a target that cannot load from one that died.
EXIT_DRAINED = 0  # asked to stop (SIGTERM): finished its job, unregistered
EXIT_BOOT_ERROR = 3  # the target could not be imported or served: restarting soon won't help
EXIT_RECYCLE = 4  # reached max_jobs or max_rss_mb after a job: replace at once
EXIT_RSS_KILLED = 5  # went past kill_rss_mb mid-job, failed that job: replace at once

#: Workers that ended and were replaced, by (pool, cause): farm_pool_restarts_total.
Exits = Counter[tuple[str, str]]
#: Every cause ``exit_cause`` names: each pool's series of them exist from its start, at 0.
EXIT_CAUSES = ("crash", "boot_failure", "timeout", "recycle", "rss", "killed", "server_lost")
#: What holds a Python worker whose loop ended (the ``exiting`` report) from its exit:
#: Python's exit waits on what its code left, not on the worker.
HELD = "a thread of its code (not a daemon) or an atexit hook holds it"
#: Why a Python worker that drained and said so is killed past its grace.
LINGERED = f"drained but did not exit: {HELD}"


def unexited(recycle_reason: str) -> str:
    """Why a Python worker whose loop ended unasked (``ProcState.EXITING``) is killed past
    its grace: recycled (``recycle_reason``, its report's: "max_jobs 100 reached"), or,
    with none, stopped by a SIGTERM that was not the supervisor's (a `kill` by hand)."""
    how = f"recycled ({recycle_reason})" if recycle_reason else "stopped unasked"
    return f"{how} but did not exit: {HELD}"


class Ended(Protocol):
    """What ``lingered`` reads of a Python worker whose loop ended (``WorkerProcess``)."""

    exiting_since: float | None  # its loop ended before it was asked to go (EXITING)
    recycle_reason: str


def lingered(proc: Ended) -> str:
    """Why a Python worker that said its loop ended is killed past its drain's grace: one
    that drained (``LINGERED``), or one recycled before it was retired (a scale-down, a
    reload, `farm stop` while its code held its exit), which never drained and was said to."""
    return LINGERED if proc.exiting_since is None else unexited(proc.recycle_reason)


def may_answer_server_loss(status: int) -> bool:
    """Whether a command worker's end may be its own answer to its job server's loss: an
    exit with any code, as its code decides on a connection it cannot make again (PHP's
    ``while ($w->work());`` exits 0, an ``exit(1)`` after the loop 1, an uncaught
    GearmanException 255), or SIGPIPE, a write to the closed connection. Not another
    signal: a segfault or the OOM killer's SIGKILL says nothing of the server."""
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) == signal.SIGPIPE
    return True


def exit_cause(
    kill_reason: str,
    status: int,
    *,
    boot_error: str = "",
    in_job: bool = False,
    served: bool = False,
    server_lost: bool = False,
) -> str:
    """Why a worker in a slot ended, as the label of farm_pool_restarts_total. ``in_job``:
    it died with a job in hand, so a code other than RSS's was the job's (a call's
    ``os._exit(3)``), a crash, not a boot failure or a recycle. ``served``: a command
    worker that ended jobs, whose exit 0 is a recycle (``Slot.note_exit``). ``server_lost``:
    a command worker that ended as its local server had died (``may_answer_server_loss``),
    no crash of its own."""
    if boot_error:
        return "boot_failure"
    if kill_reason:
        return "timeout" if "timeout" in kill_reason else "killed"
    code = os.waitstatus_to_exitcode(status)
    if in_job and code != EXIT_RSS_KILLED:
        return "crash"
    if server_lost and code != EXIT_RSS_KILLED:
        return "server_lost"
    if served and code == EXIT_DRAINED:
        return "recycle"
    causes = {EXIT_RECYCLE: "recycle", EXIT_RSS_KILLED: "rss", EXIT_BOOT_ERROR: "boot_failure"}
    return causes.get(code, "crash")


def describe_exit(status: int) -> str:
    """A wait status in words: 'exited with code 3', 'was killed by SIGKILL'."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class Working(Ended, Protocol):
    """What ``undrained`` reads of a worker process (farm.pools.slots.WorkerProcess)."""

    busy_since: float | None  # since when it runs its job in hand; None when idle
    handle: str  # that job's
    command: bool  # a command pool's process: its jobs are known from the server alone
    registration_seen: bool  # ... where the local server showed its registration
    stop_signal: int  # what asked it to stop
    exiting: bool  # a Python worker that reported its loop ended (it drained)


def undrained(proc: Working, now: float, *, quitting: bool = False) -> str:
    """Why a worker is killed at its drain's end, naming the job it still ran: `farm stop`
    and the journal said only "did not drain in time". A command worker's is the job its
    stop signal went on (farm.pools.commandjobs): this SIGKILL, not that signal, cuts it
    off when it ignored the signal, and its name was lost here. After SIGQUIT
    (``quitting``) no drain was let run out: the worker was stopped at once, and saying
    "did not drain in time" blamed it for a grace it never had. A command worker known to
    hold no job had nothing to drain: it ignored its stop signal, and is said so. A Python
    worker that reported it drained is held by its code's leftovers (``lingered``); one that
    did not (stopped, hung outside a job, its SIGTERM handler replaced) did not drain, and
    was said to have ignored SIGTERM while it had drained, held by a job's thread."""
    if quitting:
        why = "stopped at once (SIGQUIT)"
    elif proc.busy_since is None and proc.exiting:
        return lingered(proc)
    elif proc.busy_since is None and proc.command and proc.registration_seen:
        # A command worker's job is known only where the local server lists its
        # connections; elsewhere none read is no proof that it held none.
        return f"ignored {signal.Signals(proc.stop_signal).name}, holding no job"
    else:
        why = "did not drain in time"
    if proc.busy_since is None or not proc.handle:
        return why
    return cut_off(why, proc.handle, now - proc.busy_since)


def cut_off(why: str, handle: str, ran: float) -> str:
    """A stop's reason, naming the job the stop cuts off (a Python worker's SIGKILL, a
    command worker's stop signal past its grace): said alike for both kinds."""
    return f"{why}; its job {handle} (running {ran:.1f}s) is cut off"
