"""What outlives a worker: processes left in its group, and ones that left the group.

A command worker leads a process group of its own, and what is left of the group when
it ends is killed (farm.pools.lifecycle); after a drain, what is left gets the rest of the
grace first (``watch_group``: a wrapper's shell dies of the stop signal at once while the
worker it started finishes its job). A process that detaches (``setsid``, a
daemon's double fork) leaves the group, so neither the stop nor the kill reached it, and
each restart of its slot left one more running. The supervisor is a child subreaper
(``PR_SET_CHILD_SUBREAPER``): such a process, once the process that started it ended, is
its child. It is then stopped as systemd stops what is left in a unit's cgroup when its
main process ended: once the worker process it came from (``FARM_WORKER_ID`` in its
environment) has ended, it gets its pool's ``stop_signal`` (its process group, where it
leads one), then SIGKILL after the pool's grace. One whose worker still runs (Python
workers carry the variable too) is left to it. One that names no worker of the farm's
(its environment cleared, or unreadable to this user; an orphan of the children `farm up`
had before it ran), one it may not signal, and those children themselves are left alone.
Being its parent, the supervisor reaps it, so its pid is never another process's while
it is watched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farm.config import Config
from farm.lifetime import prctl
from farm.pools.exits import cut_off, undrained
from farm.pools.leftbehind import Left, pool_stop
from farm.pools.localserver import LocalServer
from farm.pools.proctree import children
from farm.pools.slots import WorkerProcess
from farm.pools.spawn import group_alive

__all__ = ["Stray", "Strays", "become_subreaper", "worker_id_of"]

log = logging.getLogger("farm.supervisor")

#: prctl(2)'s option, from <linux/prctl.h>.
PR_SET_CHILD_SUBREAPER = 36
#: What ``worker_id_of`` says of an environment it may not read.
UNREADABLE = "?"
#: How often the supervisor looks for adopted processes while the farm runs; a stop looks
#: on every turn of its drain.
SWEEP_EVERY = 2.0


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children; False where Linux does not."""
    return prctl is not None and int(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def worker_id_of(pid: int) -> str | None:
    """The ``FARM_WORKER_ID`` in a process's environment as it started; None if it has none
    (or is gone), ``UNREADABLE`` if this user may not read it (another user's process, or
    one that made itself undumpable, as ssh-agent does, where the supervisor is not root)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except PermissionError:
        return UNREADABLE
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"FARM_WORKER_ID="):
            return entry[len(b"FARM_WORKER_ID=") :].decode(errors="replace")
    return None


@dataclass
class Stray:
    """An adopted process being stopped."""

    pid: int
    name: str  # the worker it came from ("rev#2"), or "" if it does not say
    deadline: float  # SIGKILL then, if it is still there


class Strays:
    config: Config
    by_pid: dict[int, WorkerProcess]
    leftovers: list[WorkerProcess]
    server: LocalServer  # its pid is ours, not adopted
    stopping: bool
    grace: float  # the farm's; 0 once SIGQUIT said "at once"

    strays: dict[int, Stray]
    # Never stopped: the children `farm up` had before it ran (a container's entrypoint that
    # started a helper, then exec'd it), and those it may not signal (another user's).
    left_alone: set[int]
    next_stray_sweep: float
    adopting: bool

    quitting: bool  # SIGQUIT came (farm.pools.signals)
    drain_killed: tuple[dict[str, Any], ...]  # what `farm stop` lists as killed (steering)
    left_behind: dict[int, Left]  # the last supervisor's, being stopped (leftbehind)

    # Provided by farm.pools.reports: a watched group's output pipe, read to its end.
    close_output: Callable[[WorkerProcess], None]
    # Provided by farm.pools.lifecycle and farm.pools.commandjobs.
    signal: Callable[..., None]
    excuse: Callable[[WorkerProcess], None]
    ask_each: Callable[[str, list[str]], tuple[int, ...] | None]

    def watch_group(self, proc: WorkerProcess, status: int) -> None:
        """A drained command ended, but processes of its group may live on: a wrapper's shell
        dies of the stop signal at once while the worker it started finishes its job. Once
        the shell was reaped nothing watched them, and one deaf to the signal served on,
        orphaned, for good: the group gets what was left of the grace, then SIGKILL."""
        if not group_alive(proc.pid):
            # All it started ended with it: the job its stop signal went on is cut off if it
            # died of it, or left holding the job. One that only noted the signal (PHP's
            # pcntl flag), finished the job and exited was logged "cut off", and listed by
            # `farm stop` as killed, though its client had the result.
            if proc.cut_job and (os.WIFSIGNALED(status) or self.left_holding(proc)):
                proc.kill_reason = proc.kill_reason or proc.cut_job
            return
        # A wrapper's worker drains on: its job, if the signal went on one, may still end
        # well; the SIGKILL past the grace names it if it is still held then.
        if proc.stop_deadline is None:  # it ended while drained, before its stop signal
            proc.signal_at = None
            proc.stop_deadline = time.monotonic() + proc.grace
            self.signal(proc.pid, proc.stop_signal, group=True)
        self.leftovers.append(proc)

    def left_holding(self, proc: WorkerProcess) -> bool:
        """Whether a command worker that exited of itself after its stop signal left holding
        a job: its connections as they closed, counted by the server (admin ``served``).
        When the server cannot tell, the job its signal went on is taken as cut off."""
        served = self.ask_each("served", sorted(proc.peers | {f"pid:{proc.pid}"}))
        return served is None or len(served) != 2 or served[1] > 0

    def tend_leftovers(self, now: float) -> None:
        """SIGKILL to a watched group past its grace; let an emptied one go."""
        for proc in list(self.leftovers):
            # Checked every turn, so an emptied group is let go long before its id could
            # come back: pids are handed out in turn up to pid_max (32,768 at the least), so
            # that takes the whole range used up meanwhile. A new worker of ours that got
            # it, leading a group of its own, is never killed for it.
            if not group_alive(proc.pid) or proc.pid in self.by_pid:
                self.leftovers.remove(proc)
                self.close_output(proc)  # what its last process wrote, read
            elif proc.stop_deadline is not None and now >= proc.stop_deadline:
                self.excuse(proc)  # reads its job anew: the one its signal went on may be done
                why = "SIGKILL to its process group"
                if proc.busy_since is not None and proc.handle:
                    why = cut_off(why, proc.handle, now - proc.busy_since)
                log.warning(
                    "worker %s (pid %d) ended; what it started (a wrapper's worker) still"
                    " runs past the grace of its stop signal: %s",
                    proc.name,
                    proc.pid,
                    why,
                    extra=proc.log_fields(),
                )
                self.signal(proc.pid, signal.SIGKILL, group=True)
                self.leftovers.remove(proc)
                self.close_output(proc)  # what it wrote before the kill, read
                if self.stopping:
                    # Neither a worker nor a reaped one any more: report_drain never saw
                    # it, and `farm stop` did not name the job this SIGKILL cut off.
                    reason = undrained(proc, now, quitting=self.quitting)
                    self.drain_killed += ({"pid": proc.pid, "worker": proc.name, "reason": reason},)

    def adopt_orphans(self) -> None:
        """At start: become the subreaper of every process the farm starts."""
        self.strays, self.next_stray_sweep = {}, 0.0
        self.left_alone = children()
        self.adopting = become_subreaper()
        if not self.adopting:
            log.info("cannot adopt orphaned processes here: a worker's detached child outlives it")

    def sweep_strays(self, now: float, *, stopping: bool = False) -> None:
        """Stop adopted processes whose worker has ended; SIGKILL those past their grace."""
        for stray in list(self.strays.values()):
            if now >= stray.deadline:
                log.warning(
                    "pid %d (detached from worker %s) outlived its grace: SIGKILL",
                    stray.pid,
                    stray.name or "?",
                )
                if not self.signal_stray(stray.pid, signal.SIGKILL):
                    self.leave_alone(stray.pid)
                stray.deadline = float("inf")  # reaped soon; SIGKILL is not sent twice
        if not self.adopting or (now < self.next_stray_sweep and not stopping):
            return
        self.next_stray_sweep = now + SWEEP_EVERY
        ours = set(self.by_pid) | set(self.strays) | self.left_alone
        ours.add(self.server.pid)
        adopted = children() - ours
        if not adopted:
            return
        running = {p.worker_id for p in self.by_pid.values() if p.worker_id}
        watched = {p.pid for p in self.leftovers}  # drained groups: watch_group signals them
        for pid in adopted:
            wid = worker_id_of(pid)
            if wid is None or wid == UNREADABLE or not wid.startswith("farm:"):
                # It names no worker of the farm's: an orphan of a process `farm up` had
                # before it ran (or, as a container's PID 1, of anything), one whose
                # environment may not be read, one that cleared it, or a zombie's. None of
                # these is known to be the farm's to stop.
                self.left_alone.add(pid)
                continue
            if wid in running:
                continue  # detached from a worker that still runs: it goes when that ends
            with contextlib.suppress(OSError):
                if os.getpgid(pid) in watched:
                    continue  # a drained wrapper's worker: its stop signal came, once
            self.stop_stray(pid, wid, now)

    def stop_stray(self, pid: int, wid: str, now: float) -> None:
        name = wid[len("farm:") :].rsplit(":", 1)[0]  # "pool#slot"
        sig, grace = pool_stop(self.config, name)
        if self.stopping and self.grace == 0:
            grace = 0.0  # SIGQUIT: at once
        log.warning(
            "pid %d detached from worker %s and outlived it: %s, SIGKILL in %gs",
            pid,
            name,
            signal.Signals(sig).name,
            grace,
        )
        self.strays[pid] = Stray(pid, name, now + grace)
        if not self.signal_stray(pid, sig):
            self.leave_alone(pid)

    def leave_alone(self, pid: int) -> None:
        """One the supervisor may not signal (it runs as another user): said, and let be,
        or a stop would wait for it for ever."""
        log.warning("pid %d runs as another user: the farm cannot stop it", pid)
        self.strays.pop(pid, None)
        self.left_alone.add(pid)

    def signal_stray(self, pid: int, sig: int) -> bool:
        """Its whole process group where it leads one (a daemon that called setsid); False
        if this user may not signal it."""
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass  # gone: reaped soon
        except PermissionError:
            return False
        return True

    def stray_reaped(self, pid: int) -> bool:
        """A reaped pid that was an adopted process: forget it."""
        self.left_alone.discard(pid)  # its pid may be another child's next
        return self.strays.pop(pid, None) is not None

    def stray_deadlines(self) -> list[float]:
        times = [s.deadline for s in self.strays.values() if s.deadline != float("inf")]
        if self.adopting:
            times.append(self.next_stray_sweep)
        return times

    def drain_left(self) -> tuple[int, int, list[float]]:
        """At a stop, what the farm still waits for: the workers (a wrapper's worker that
        drains on after its shell was reaped, a leftover, counts), the detached processes,
        and when each is SIGKILLed at the latest (monotonic). `farm stop` and STATUS= both
        say it: either alone read "0 workers" while the farm waited on detached ones."""
        draining = [*self.by_pid.values(), *self.leftovers]
        deadlines = [p.stop_deadline for p in draining if p.stop_deadline]
        deadlines += [p.signal_at + p.grace for p in self.by_pid.values() if p.signal_at]
        deadlines += [s.deadline for s in self.strays.values() if s.deadline != float("inf")]
        # And what the farm's last supervisor left running (farm.pools.leftbehind).
        deadlines += [left.deadline for left in self.left_behind.values()]
        return len(draining), len(self.strays) + len(self.left_behind), deadlines

    def strays_left(self) -> bool:
        """At a stop: whether adopted processes are still there (looked for now)."""
        self.sweep_strays(time.monotonic(), stopping=True)
        return bool(self.strays)
