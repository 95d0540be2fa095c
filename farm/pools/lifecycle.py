"""A worker process's life under the supervisor: its timeouts, retire, kill, reap.

A mixin of :class:`farm.supervisor.Supervisor`, split off to keep the main
loop's module short. A worker is started by farm.pools.workerstart (a Python pool's
or a command pool's, its stdout and stderr on a pipe that farm.pools.reports reads);
this module sees it through its jobs' timeouts, its drain and its end. When a
command worker, which says nothing, serves is farm.pools.commandstart's to decide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from farm.config import Config, FunctionConfig
from farm.pools.exits import (
    describe_exit,
    exit_cause,
    lingered,
    may_answer_server_loss,
    undrained,
    unexited,
)
from farm.pools.localserver import LocalServer
from farm.pools.slots import ProcState, Slot, WorkerProcess
from farm.pools.spawn import EXEC_FAILED_PREFIX, EXIT_EXEC_FAILED
from farm.pools.workerstart import WorkerStart

__all__ = ["Lifecycle", "TIMEOUT_GRACE"]

log = logging.getLogger("farm.supervisor")

#: A job is killed this long after its function's timeout (the server fails it at the timeout).
TIMEOUT_GRACE = 1.0
#: While something starts (the server, a command worker's connection, a successor), the
#: supervisor's loop looks at it this often.
POLL = 0.02


class Lifecycle(WorkerStart):
    config: Config
    slots: dict[str, list[Slot]]
    retiring: list[WorkerProcess]
    quitting: bool  # SIGQUIT came: every worker is stopped at once (farm.pools.signals)
    # Drained command workers that ended and left processes in their group (farm.pools.strays).
    leftovers: list[WorkerProcess]
    by_pid: dict[int, WorkerProcess]
    server: LocalServer

    # Provided by farm.pools.rollout: a successor's end before it served; any slot's, counted.
    successor_exited: Callable[[Slot, WorkerProcess, int], None]
    slot_exited: Callable[[Slot, WorkerProcess, int, str], None]
    # Provided by farm.pools.commandjobs: a command worker's jobs and drain, from the server.
    drain_command: Callable[[WorkerProcess, float], bool]
    track_commands: Callable[..., None]
    excuse: Callable[[WorkerProcess], None]
    count_served: Callable[[WorkerProcess, int], None]
    # Provided by farm.supervisor: the local server's end, reaped.
    server_ended: Callable[[int], None]
    # Provided by farm.pools.reports: what is left on a worker's pipes, read and closed.
    close_pipes: Callable[[WorkerProcess], None]
    # Provided by farm.pools.reports: what waits on a Python worker's report pipe, read now;
    # that pipe alone closed (a drained wrapper's output is read on while its group lives).
    read_report: Callable[[WorkerProcess], None]
    close_report: Callable[[WorkerProcess], None]
    # Provided by farm.pools.strays: what a worker left in its process group.
    watch_group: Callable[[WorkerProcess, int], None]
    tend_leftovers: Callable[[float], None]

    # -- the loop's steps --

    def kill_overrunning(self) -> None:
        """SIGKILL a worker whose job outlived its timeout, or a drain past its deadline."""
        self.track_commands()  # command workers' jobs in hand, from the job server
        now = time.monotonic()
        for proc in list(self.by_pid.values()):
            proc.refresh()  # the supervisor's tick reads each worker's record; no per-job message
            timeout = proc.timeout
            if proc.state is ProcState.KILLING:
                continue
            if self.boot_overran(proc, now):
                continue
            if timeout and proc.busy_since and now - proc.busy_since > timeout + TIMEOUT_GRACE:
                self.kill(proc, f"job {proc.handle} ran past its {timeout}s timeout")
            elif proc.stop_deadline is not None and now >= proc.stop_deadline:
                self.excuse(proc)
                self.kill(proc, undrained(proc, now, quitting=self.quitting))
            elif self.stuck_idle(proc, now):
                grace = self.config.supervisor.graceful_timeout
                stuck = f"held no job, yet had not exited {grace:g}s after its SIGTERM"
                self.kill(proc, lingered(proc) if proc.exiting else stuck)
            elif proc.state is ProcState.EXITING and now >= self.exit_deadline(proc):
                self.kill(proc, unexited(proc.recycle_reason))
        self.tend_leftovers(now)

    def linger_deadline(self, proc: WorkerProcess) -> float | None:
        """When a Python worker whose loop ended is killed if it has not exited: one asked
        to drain, graceful_timeout after it was last seen holding no job (``stuck_idle``);
        one recycled (``EXITING``: max_jobs, max_rss_mb; no SIGTERM, no drain),
        graceful_timeout after it said so. Python's exit waits on a job's thread that is not
        a daemon: such a recycled worker was left in its slot as idle for ever, its slot
        serving nothing and never refilled. Killed, it is replaced at once (a planned
        exit); not started beside it before, as its slot's memory (a max_rss_mb recycle's
        is large) and core are still its own."""
        if proc.state is ProcState.EXITING:
            return self.exit_deadline(proc)
        if proc.idle_draining is not None:
            return proc.idle_draining + self.config.supervisor.graceful_timeout
        return None

    def exit_deadline(self, proc: WorkerProcess) -> float:
        """A recycled worker's (``EXITING``) kill, if it has not exited by then."""
        since = proc.exiting_since if proc.exiting_since is not None else time.monotonic()
        return since + self.config.supervisor.graceful_timeout

    def stuck_idle(self, proc: WorkerProcess, now: float) -> bool:
        """A draining Python worker with no deadline (one with no timeout drains after its
        job, however long that takes) that holds no job exits at once; one still there
        graceful_timeout later is stuck (stopped, or hung outside a job), and a scale-down
        or `farm stop` waited on it for ever."""
        if proc.command or proc.state is not ProcState.DRAINING or proc.stop_deadline is not None:
            return False
        if proc.busy_since is not None:
            proc.idle_draining = None
            return False
        if proc.idle_draining is None:
            proc.idle_draining = now
        return now - proc.idle_draining > self.config.supervisor.graceful_timeout

    def boot_overran(self, proc: WorkerProcess, now: float) -> bool:
        """Kill a Python worker that has not loaded its target within boot_timeout (a module
        that hangs at import): a failed boot, backed off, logged once when it is reaped. A
        command worker is left alone: a wrapper's child may hold its connection unseen."""
        boot_timeout = self.config.supervisor.boot_timeout
        if proc.command or proc.state is not ProcState.STARTING:
            return False
        if now - proc.started <= boot_timeout:
            return False
        # Its "ready" may wait unread: the loop reads the pipes after this step, and a
        # supervisor that got no CPU for a while (SIGSTOP, a VM paused, a starved host) came
        # here first on resuming, and killed a worker that had served for seconds.
        self.read_report(proc)
        if proc.served:  # it said "ready" (WorkerProcess.apply)
            return False
        proc.boot_error = f"did not load its target within {boot_timeout:g}s; hanging at import?"
        proc.state, proc.kill_reason = ProcState.KILLING, proc.boot_error
        self.signal(proc.pid, signal.SIGKILL)
        return True

    def worker_exited(self, proc: WorkerProcess, status: int) -> None:
        if proc.command and proc.state is ProcState.DRAINING:
            # Its group got the stop signal and drains on: a wrapper's shell dies of it at
            # once while the worker it started finishes its job.
            self.watch_group(proc, status)
        else:
            # Else what it started goes with it, or a wrapper's PHP worker would serve on,
            # orphaned, beside the slot's next process; a Python worker that drained has
            # finished its job, and what the job left in its group (a helper it started)
            # is as stray as after a crash or a recycle.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        # Its last output first: the exec check below and the end's log line quote it.
        if proc in self.leftovers:
            # Its group's worker finishing its job writes on the same pipe: read on until
            # the group has ended (tend_leftovers closes it). Closed with the shell, what
            # the worker said then was lost, and one that does not ignore SIGPIPE (Perl,
            # C) died of its first line, cutting off the job it was given the grace for.
            self.close_report(proc)
        else:
            self.close_pipes(proc)
        proc.close()
        if (
            proc.command
            and os.waitstatus_to_exitcode(status) == EXIT_EXEC_FAILED
            and proc.last_words.startswith(EXEC_FAILED_PREFIX)
        ):
            # farm.pools.spawn's child could not exec it (no shebang, no interpreter): it
            # will not exec next time either, so a boot failure's backoff, with its reason.
            proc.boot_error = proc.last_words
        now = time.monotonic()
        proc.forget_stale_job(now)  # a command worker's job, as the server said it lately
        pool_slots = self.slots.get(proc.function, ())
        heir = next((s for s in pool_slots if s.successor is proc), None)
        if heir is not None:
            self.successor_exited(heir, proc, status)
            return
        slot = next((s for s in pool_slots if s.proc is proc), None)
        if slot is None:  # retired by scale-down, reload, restart or stop: an ordered exit
            self.retiring.remove(proc)
            # A kill at the drain's end is no drain: the line says why (its job cut off); nor
            # is the end of one that never served.
            how = f"while draining ({proc.kill_reason})" if proc.kill_reason else "after draining"
            if proc.retired_starting and not proc.kill_reason:
                loading = "before it connected" if proc.command else "while loading its target"
                how = f"before it served (retired {loading})"
            elif self.quitting and proc.command:
                # SIGQUIT drains nothing ("no grace and no drain"): not "after draining", nor
                # "while draining", whether its SIGKILL came before its stop signal ended it.
                how = f"({proc.kill_reason or 'stopped at once (SIGQUIT)'})"
            log.info("worker %s (pid %d) %s %s", proc.name, proc.pid, describe_exit(status), how)
            return
        slot.proc = None
        slot.restarts += 1  # an end nobody asked for (a crash, a kill, a recycle): counted
        if proc.command:
            self.count_served(proc, status)  # its jobs, from the server: "0 jobs" when not polled
        # A command worker seen serving the local server may end of its death (a Python
        # worker reconnects by itself, and its exit codes are farm's): no crash of its own.
        # One never seen there (`sleep 3; exit 1`) ends of its own whenever it ends. A
        # server that stops closes its connections before its end can be reaped: asked now
        # whether it goes away (LocalServer.ending), or its workers were judged crashed.
        lost = proc.command and proc.local_seen and may_answer_server_loss(status)
        lost = lost and self.config.local_server
        if lost and self.server.ready and (ended := self.server.ending()) is not None:
            self.server_ended(ended)
        lost = lost and self.server.lost_by(proc.started, now)
        if lost:  # a job listed before its server went away: SIGUSR1 lets it end first
            proc.forget_stale_job(now, self.server.serving_since())
        in_job = proc.busy_since is not None
        cause = exit_cause(
            proc.kill_reason,
            status,
            boot_error=proc.boot_error,
            in_job=in_job,
            served=proc.served_jobs,
            server_lost=lost,
        )
        self.slot_exited(slot, proc, status, cause)
        how, delay = slot.note_exit(proc, status, now, server_lost=lost)
        when = "now" if delay == 0 else f"in {delay:g}s"
        if delay == 0 and not self.server.ready and self.config.local_server:
            when = "once the job server answers again"  # manage_workers waits for it
        # By its cause: a recycle killed for lingering says "recycled" too, and is a warning.
        level = logging.INFO if cause in ("recycle", "server_lost") else logging.WARNING
        # The warning quotes its last output, so `journalctl -p warning` shows why a PHP
        # worker crash-loops; not a boot failure's why again, and for a Python worker only
        # when it crashed (its other ends say why themselves: a boot report, a recycle, RSS).
        quote = proc.last_words and proc.last_words != proc.boot_error
        quote = quote and (proc.command or cause == "crash")
        said = f"; {proc.quote_last_words(now)}" if quote else ""
        slot.last_exit = how + said  # `farm ps --json`, `farm reload` of a new pool: why
        log.log(
            level,
            "worker %s (pid %d, up %.1fs, %d jobs) %s%s; restarting %s%s",
            proc.name,
            proc.pid,
            now - proc.started,
            proc.jobs_done,
            how,
            said,
            when,
            " (slot failing)" if slot.failing else "",
            extra=proc.log_fields(),
        )

    # -- processes --

    def retire(
        self, proc: WorkerProcess, pool: FunctionConfig | None, grace: float | None = None
    ) -> None:
        """Ask a worker to stop: a Python worker drains (finishes its job, unregisters, exits 0)
        on SIGTERM; a command worker is first drained by the job server (no more jobs), and
        gets its pool's ``stop_signal`` once it holds none or after the grace
        (farm.pools.commandjobs). SIGKILL after the grace that follows the signal."""
        if grace is None:
            grace = self.grace_for(pool, proc.command, proc.timeout)
        serving = proc.state.serving
        proc.retired_starting = proc.state is ProcState.STARTING
        if proc.state is not ProcState.KILLING:
            proc.state = ProcState.DRAINING
        self.retiring.append(proc)
        if proc.command and serving and grace is not None and self.drain_command(proc, grace):
            proc.stop_deadline = None  # set when its stop_signal goes
            return
        proc.stop_deadline = None if grace is None else time.monotonic() + grace
        self.signal(proc.pid, proc.stop_signal, group=proc.command)

    def grace_for(
        self, pool: FunctionConfig | None, command: bool, timeout: int | None = None
    ) -> float | None:
        """How long a retiring worker (a ``command`` one, or a Python one) may take: a command
        pool's graceful_timeout (else the supervisor's); for a Python worker with a
        ``timeout`` (the one it started with), that plus the supervisor's; else unbounded (a
        Python worker drains after its job, whatever it takes)."""
        if pool is not None and (pool.command is not None) != command:
            # A reload made a PHP pool a Python target, or back, and this is an old process
            # (being replaced, or kept while the new kind does not boot): it stops as its own
            # kind does. A command worker given no grace got its signal at once, mid-job.
            pool = None
        if command:
            if pool is not None and pool.graceful_timeout is not None:
                return pool.graceful_timeout
            return self.config.supervisor.graceful_timeout
        if pool is not None and pool.command is not None:
            if pool.graceful_timeout is not None:
                return pool.graceful_timeout
            return self.config.supervisor.graceful_timeout
        if timeout:
            return timeout + self.config.supervisor.graceful_timeout
        return None

    def kill(self, proc: WorkerProcess, reason: str) -> None:
        log.warning(
            "killing worker %s (pid %d): %s", proc.name, proc.pid, reason, extra=proc.log_fields()
        )
        proc.state, proc.kill_reason = ProcState.KILLING, reason
        self.signal(proc.pid, signal.SIGKILL, group=proc.command)

    def signal(self, pid: int, sig: int, *, group: bool = False) -> None:
        """Signal a worker; with ``group``, every process of its process group (a command
        worker run through a wrapper, `sh -c "php worker.php"`: the shell passes nothing
        on, and the PHP worker it started is the one that serves)."""
        try:
            if group:
                os.killpg(pid, sig)  # each worker leads a group of its own (farm.pools.spawn)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass  # already dead; reaping will report it
        except PermissionError:
            # What is left is another user's (a wrapper's `sudo -u www php ...` once its
            # shell died): nothing to do but say so, and the supervisor must live on.
            log.warning(
                "cannot send %s to %s %d: it runs as another user",
                signal.Signals(sig).name,
                "process group" if group else "pid",
                pid,
            )
