"""The supervisor's bookkeeping: slots and the processes in them.

A *slot* is one numbered place in a function's pool ("resize#3"), pinned to
one core for its whole life; the process in it comes and goes. Slots carry the
restart history (backoff, failing: the policy is farm.pools.restartpolicy's, which
the local server follows too), processes carry what the worker reported (state,
jobs done, the job in hand). Nothing here does I/O, so the policy is testable
without processes.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from farm.pools.exits import (
    EXIT_BOOT_ERROR,
    EXIT_DRAINED,
    EXIT_RECYCLE,
    EXIT_RSS_KILLED,
    describe_exit,
)
from farm.pools.outputlimit import OutputLines
from farm.pools.record import RecordReader
from farm.pools.restartpolicy import FREE_JOB_CRASHES, RestartHistory

__all__ = [
    "ProcState",
    "Slot",
    "WorkerProcess",
    "core_for",
    "worker_name",
]

log = logging.getLogger("farm.supervisor")

#: A worker's last line read this long before its end is quoted with its age (the log of
#: its end): more than the supervisor's loop takes to read a dying worker's pipe.
LAST_WORDS_FRESH = 1.0
#: A command worker's job in hand, as the job server's ``peers`` last said it, is trusted
#: this long (farm.pools.commandjobs asks every 0.5 s for a pool with a timeout, 0.1 s
#: while it drains; `farm ps` once, `farm top` each second): an older answer says nothing
#: of the job it dies in. Four polls of a timeout, so a slow answer does not lose its job.
JOB_SEEN_STALE = 2.0


def core_for(cpus: Sequence[int], offset: int, index: int) -> int:
    """The core of slot ``index`` of a pool placed at ``offset``: round robin, stable."""
    return cpus[(offset + index) % len(cpus)]


def worker_name(function: str, slot: int, core: int) -> str:
    """A slot's (and its process's) name, as the log, `farm ps` and `farm reload` write it:
    ``bad#0 cpu1``."""
    return f"{function}#{slot} cpu{core}"


class ProcState(enum.StrEnum):
    """Where a worker process is in its life; ``farm ps`` shows the value."""

    STARTING = "starting"  # spawned, has not reported ready yet
    IDLE = "idle"
    BUSY = "busy"  # holds a job
    DRAINING = "draining"  # asked to stop after its job (SIGTERM)
    KILLING = "killing"  # killed by the supervisor (timeout, drain deadline)
    # A Python worker whose loop ended unasked (a recycle: max_jobs, max_rss_mb): it takes
    # no job, and what is left is its exit, which its code's threads may hold (lifecycle).
    EXITING = "exiting"
    RUNNING = "running"  # a command worker connected to its server (it tells no more)

    @property
    def ordered(self) -> bool:
        """The supervisor asked it to go, so its exit is never a crash."""
        return self in (ProcState.DRAINING, ProcState.KILLING)

    @property
    def serving(self) -> bool:
        return self in (ProcState.IDLE, ProcState.BUSY, ProcState.RUNNING)


@dataclass(eq=False)
class WorkerProcess:
    """One running worker process and what it last told the supervisor."""

    pid: int
    function: str
    slot: int
    core: int
    report_fd: int  # read end of the pipe a Python worker reports on (ready, recycle); or -1
    options: tuple[object, ...]  # FunctionConfig.options() it was started with
    # Its pool's timeout when it started: what it registered (CAN_DO_TIMEOUT) and is held
    # to until it exits; a reload's new one is for its successor (the rollout's).
    timeout: int | None = None
    record: RecordReader | None = None  # what it is doing, in shared memory (farm.pools.record)
    started: float = field(default_factory=time.monotonic)
    state: ProcState = ProcState.STARTING
    # Whether it ever served (reported ready, or a command worker seen connected): its
    # state says so no longer once it is killed or drains, and a reload's new target whose
    # first process ended before it served did not boot, whatever its exit's cause.
    served: bool = False
    jobs_done: int = 0
    rss: int = 0
    handle: str = ""
    busy_since: float | None = None
    job_server: int = 0  # the job's server: its place in the worker's list, from 1 (0: unsaid)
    servers: tuple[str, ...] = ()  # a Python worker's list (--server), as it was started
    # A Python worker's functions and target, "resize (imgs:run)", named by its death in a
    # job: an os._exit() there cannot be caught and logged by the worker itself.
    runs: str = ""
    stop_deadline: float | None = None  # SIGKILL if still alive then (draining)
    kill_reason: str = ""  # why the supervisor killed it, so its death is not a crash
    # A command worker's job its stop signal went on (past the grace, or SIGQUIT's none):
    # its kill_reason once its group ends with it; a wrapper's worker may still finish it.
    cut_job: str = ""
    retired_starting: bool = False  # retired before it served: its exit drained no job
    exiting: bool = False  # a Python worker that said its loop ended: all left is its exit
    exiting_since: float | None = None  # ... when it said so outside a drain (EXITING)
    boot_error: str = ""  # why it never served (could not exec, no ready in time): a boot failure
    recycle_reason: str = ""
    command: bool = False  # a command pool's process (it has no report pipe)
    tree_cpu: float = 0.0  # the most CPU seconds its tree was read at (farm.pools.metrics)
    worker_id: str = ""  # its FARM_WORKER_ID (farm.pools.strays)
    output_fd: int = -1  # read end of the pipe its stdout and stderr share
    out: OutputLines = field(default_factory=OutputLines)  # its lines, within their budget
    output_resume: float | None = None  # flooding: when its pipe is read again (reports)
    connect_checked: float = 0.0  # a starting command worker: when its sockets were looked at
    remote_since: float | None = None  # ... and since when seen connected to remote ones alone
    stop_signal: int = signal.SIGTERM  # what asks it to stop (SIGTERM drains a Python worker)
    # A command worker, as the job server sees it (farm.pools.commandjobs): the names of its
    # connections in the server's `peers`, when they were read, jobs done per connection;
    # while it drains, when its stop_signal is due at the latest, and the grace after it.
    peers: frozenset[str] = frozenset()
    # Connected, but none of its connections registered its pool's functions: what they did
    # ("registered wrong, not rev"; "wrong so far" until it asks for jobs: then it is final).
    misregistered: str = ""
    misregistered_final: bool = False
    # What its connections registered at the last look, and since when (monotonic): final
    # once it asked for jobs with it and held it a while (peerlist.Registered.of).
    registered: tuple[frozenset[str], float] = (frozenset(), 0.0)
    # A command worker serving: whether the local server showed one of its pool's functions
    # registered by it. Not where nothing could tell: its connections all go to remote
    # servers, or the local server answers `peers` nowhere the supervisor may ask.
    registration_seen: bool = False
    # A command worker seen serving the local server (connected to it, registered where
    # that can be told): only such a one's end may be its server's loss (lifecycle).
    local_seen: bool = False
    peers_read: float = 0.0
    peer_jobs: dict[str, int] = field(default_factory=dict)
    job_seen: float | None = None  # when the server's peers last said its job in hand
    signal_at: float | None = None
    grace: float = 0.0
    # A Python worker asked to drain: since when it has been seen holding no job (it should
    # exit at once then; past graceful_timeout it is killed: farm.pools.lifecycle).
    idle_draining: float | None = None
    _buffer: bytes = b""

    @property
    def name(self) -> str:
        return worker_name(self.function, self.slot, self.core)

    def log_fields(self) -> dict[str, object]:
        """What a log record about it names beyond its message, as farm.logs' JSON fields:
        its pool (``function``), ``slot`` and the ``job`` in hand, so that one job's lines
        from the server, the supervisor and the worker select alike."""
        return {"function": self.function, "slot": self.slot, "job": self.handle or None}

    @property
    def ordered(self) -> bool:
        """Whether the supervisor asked it to go (its exit is never a crash)."""
        return self.state.ordered

    @property
    def served_jobs(self) -> bool:
        """A command worker that ended jobs (as the job server counted them): its exit 0 is
        a recycle, not a crash."""
        return self.command and self.jobs_done > 0

    @property
    def last_words(self) -> str:
        """Its last line of output (not a stack trace's tail), for the log of its end."""
        return self.out.last_words

    def quote_last_words(self, now: float) -> str:
        """``its last output: '...'`` for the log of its end at ``now``; with its age when it
        was not written as it ended (``LAST_WORDS_FRESH``): a warning that another call
        printed minutes before a segfault was quoted as if it said why the worker died."""
        age = now - self.out.last_words_at
        when = f" ({age:.1f}s before it ended)" if age > LAST_WORDS_FRESH else ""
        return f"its last output{when}: {self.last_words!r}"

    def forget_stale_job(self, now: float, listed_after: float = -math.inf) -> None:
        """A command worker's job in hand (``handle``, ``busy_since``) forgotten when the
        server said it more than ``JOB_SEEN_STALE`` ago: nothing clears it when the job
        ends, so a `farm ps` minutes before a crash named the job the worker had finished
        long since, and a crash in no known job was restarted as a death in a job. So is
        one said before ``listed_after``: by a server found going away since, whose graceful
        stop lets the job end before it closes the worker's connection."""
        seen = self.job_seen
        if (
            self.command
            and seen is not None
            and (now - seen > JOB_SEEN_STALE or seen < listed_after)
        ):
            self.handle, self.busy_since, self.job_seen = "", None, None

    def feed(self, data: bytes) -> None:
        """Apply report lines from the worker (JSON, one a line; see farm.pools.workerproc)."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn line from a dying worker; the next report corrects it
            self.apply(event)

    def apply(self, event: dict[str, object]) -> None:
        """A report line: ``ready`` (it serves now), ``recycle`` (it exits after this job),
        ``boot_error`` (it cannot serve its target, and exits 3: why, for the log of its end)
        or ``exiting`` (its loop ended: what holds it now is its code's, farm.pools.exits;
        outside a drain it is ``EXITING``, no longer serving, and killed if it lingers).
        What it does job by job is in its shared-memory record, read by ``refresh``."""
        kind = event.get("ev")
        if kind == "recycle":
            self.recycle_reason = str(event.get("why", ""))
        elif kind == "boot_error" and self.state is ProcState.STARTING:
            self.boot_error = str(event.get("why", "")) or "exited with code 3"
        elif kind == "exiting":
            self.exiting = True
            if self.state.serving:  # not asked to go: a recycle, its slot's to refill
                self.state, self.exiting_since = ProcState.EXITING, time.monotonic()
        elif kind == "ready" and self.state is ProcState.STARTING:
            self.state, self.served = ProcState.IDLE, True
            self.refresh()
            # As a command worker's (farm.pools.commandstart): `farm up -v` tells each one.
            log.debug("worker %s (pid %d) serves", self.name, self.pid, extra=self.log_fields())

    def refresh(self) -> None:
        """Take the job in hand, jobs done and RSS from the worker's record."""
        if self.record is None:
            return
        now = self.record.read()
        self.jobs_done, self.handle, self.busy_since = now.jobs_done, now.handle, now.busy_since
        self.job_server = now.server
        if now.rss:
            self.rss = now.rss
        if self.state.serving:
            self.state = ProcState.BUSY if now.busy_since is not None else ProcState.IDLE

    def seen_now(self) -> tuple[ProcState, int]:
        """Its state and jobs done as its record says now, changing none of the slot's own
        fields (the reader keeps its last reading): what another thread (the metrics
        endpoint's) may read, where ``refresh`` is the loop's own, up to a second old by the
        time of a scrape."""
        record, state = self.record, self.state
        if record is None:
            return state, self.jobs_done
        try:
            now = record.read()
        except ValueError:  # closed by the loop just now: it exited, with its last word
            return self.state, self.jobs_done
        if state.serving:
            state = ProcState.BUSY if now.busy_since is not None else ProcState.IDLE
        return state, now.jobs_done

    def close(self) -> None:
        if self.record is not None:
            self.refresh()  # the last word: jobs done, for the exit's log line
            self.record.close()
            self.record = None


@dataclass(eq=False)
class Slot(RestartHistory):
    """A numbered, pinned place in a function's pool, and its restart history."""

    function: str
    index: int
    core: int
    proc: WorkerProcess | None = None
    spawned: int = 0
    successor: WorkerProcess | None = None  # `farm restart`: takes over once it serves

    @property
    def name(self) -> str:
        return worker_name(self.function, self.index, self.core)

    def note_exit(
        self, proc: WorkerProcess, status: int, now: float, *, server_lost: bool = False
    ) -> tuple[str, float]:
        """Record ``proc``'s end in the slot's restart history; return (what happened, delay
        before the next start). The caller (farm.pools.lifecycle) sets ``last_exit``: it adds
        the process's last output where that says why. ``server_lost``: a command worker
        that ended as the local server had died (``LocalServer.lost_by``), which it may
        answer with any exit code (``exits.may_answer_server_loss``)."""
        code = os.waitstatus_to_exitcode(status)
        how = describe_exit(status)
        self.lived(now - proc.started)
        if proc.boot_error:
            how, delay = f"failed to boot ({proc.boot_error})", self.failed(now, boot=True)
        elif proc.kill_reason:
            how, delay = f"{how} ({proc.kill_reason})", self.planned(now)
        elif code == EXIT_RSS_KILLED:
            # Not a crash: the worker failed its job (WORK_FAIL, no retry) and left on purpose.
            job = f"; job {proc.handle} failed" if proc.handle else ""
            how, delay = f"killed: RSS over kill_rss_mb{job}", self.planned(now)
        elif proc.busy_since is not None:
            # It served, then died in a job (os._exit, a segfault in an extension): the
            # job's doing, and a worker that booted once boots again. Backing off here let
            # a few bad calls take a pool offline for minutes. Checked before the codes
            # below: the job's code chose this exit code (a call's os._exit(3) is no boot
            # failure, os._exit(4) no recycle), the worker only exits 3 or 4 between jobs.
            job = f" {proc.handle}" if proc.handle else ""  # a command worker's: unknown
            job += f" of {proc.runs}" if proc.runs else ""
            how = f"crashed in job{job}: {how}"
            if self.job_crashes < FREE_JOB_CRASHES:
                self.job_crashes += 1
                delay = self.planned(now)
            else:  # a crash loop, backed off as one: its job and code matter all the more
                how += f" (past {FREE_JOB_CRASHES} deaths in jobs: counted as a crash)"
                delay = self.failed(now)
        elif server_lost:
            # A PHP worker's `while ($w->work());` ends when its server is gone (work():
            # GEARMAN_COULD_NOT_CONNECT) where a Python worker reconnects. Counted as a
            # crash, two server deaths took every PHP slot to "failing" and its backoff;
            # the supervisor starts it again once the new server answers (manage_workers).
            how, delay = f"lost its job server ({how})", self.planned(now)
        elif code == EXIT_DRAINED and proc.served_jobs:
            # A command worker that stopped itself after its jobs, as PHP workers do
            # (`while ($w->work()) { if (++$n >= 100) exit(0); }`): a recycle. Counted as a
            # crash, a healthy pool backed off, went "failing" and fired
            # FarmWorkersCrashLooping. One that exits 0 before any job cannot work: below.
            how = f"was recycled (exited with code 0 after {proc.jobs_done} jobs)"
            delay = self.planned(now)
        elif code == EXIT_RECYCLE:
            said = "exited with code 4" if proc.command else "limit reached"
            how = f"was recycled ({proc.recycle_reason or said})"
            delay = self.planned(now)
        elif code == EXIT_BOOT_ERROR:
            how, delay = f"failed to boot ({how})", self.failed(now, boot=True)
        else:
            how = f"stopped unasked ({how})" if code == EXIT_DRAINED else f"crashed: {how}"
            delay = self.failed(now)
        self.boot_error = proc.boot_error
        return how, delay

    def note_healthy(self, now: float) -> None:
        """A process that has served a minute clears the slot's crash history."""
        if self.proc is not None and self.failures:
            self.lived(now - self.proc.started)
