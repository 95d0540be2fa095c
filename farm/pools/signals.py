"""What each signal to `farm up` means (docs/operations.md, "Steering a running farm"): a mixin of
:class:`farm.supervisor.Supervisor`. As in gunicorn's arbiter the handlers only enqueue and
wake the loop; ``handle_signals``, a step of the loop, acts on what came."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import termios
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from farm.pools.slots import WorkerProcess
from farm.pools.steering import Duty, Pending
from farm.pools.strays import Stray
from farm.waker import Waker

if TYPE_CHECKING:
    from farm.pools.localserver import LocalServer

__all__ = ["HANDLED", "NOT_OURS", "Signals", "hung_up"]

log = logging.getLogger("farm.supervisor")

#: The signals the supervisor acts on (docs/operations.md), and those it only says it
#: ignores: Python's default for SIGUSR1 and SIGUSR2 ends the process, and a stray one (a
#: gearmand habit: gearmand and `farm server` stop gracefully on SIGUSR1) took the farm down
#: mid-job, with no drain.
HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGTSTP,
)
NOT_OURS = (signal.SIGUSR1, signal.SIGUSR2)
#: How long after the terminal `farm up` logs to is first seen hung up a SIGHUP is still the
#: hang-up's (a login shell passes its own on to its jobs as it goes); a later one is a reload.
HANGUP_WINDOW = 5.0


def hung_up(terminals: list[int]) -> bool:
    """Whether one of these descriptors' terminal hung up (its window closed, its ssh
    session ended): the kernel fails every call on a hung-up terminal with EIO."""
    for fd in terminals:
        try:
            termios.tcgetattr(fd)
        except termios.error as e:
            if e.args[0] == errno.EIO:
                return True
    return False


def own_terminals() -> list[int]:
    """The standard streams whose terminal's hang-up ends `farm up` (HANGUP_WINDOW): stderr,
    where its log goes, and stdin or stdout where it is that terminal's foreground job
    (`farm up 2>&1 | tee farm.log`: the log goes to `tee`, which ends with the terminal,
    and the farm ran on unseen, holding its sockets). Not a background job's stdin: `farm
    up >farm.log 2>&1 & disown` keeps the terminal there, and a `kill -HUP` after it closed
    still reloads it."""
    terminals = []
    for fd in (0, 1, 2):
        try:
            # tcgetpgrp: ENOTTY where it is no terminal, or not this session's
            if os.isatty(fd) and (fd == 2 or os.tcgetpgrp(fd) == os.getpgrp()):
                terminals.append(fd)
        except OSError:
            pass
    return terminals


class Signals:
    terminals: list[int]  # own_terminals(); [] once hung up
    hung_up_until: float  # a SIGHUP before this is the terminal's hang-up (HANGUP_WINDOW)
    waker: Waker
    selector: selectors.BaseSelector
    pending: list[Pending]
    stopping: bool
    quitting: bool  # SIGQUIT came: a kill says "stopped at once", not "did not drain in time"
    grace: float
    by_pid: dict[int, WorkerProcess]
    leftovers: list[WorkerProcess]
    strays: dict[int, Stray]
    server: LocalServer
    started: float  # the supervisor's start (ready_wait)
    # Provided by farm.pools.steering: a reload asked by SIGHUP or `farm reload`.
    answer_reload: Callable[[Pending], None]
    # Provided by farm.pools.commandjobs: the jobs in hand read, and all excused, at once.
    quit_workers: Callable[[list[WorkerProcess]], None]

    def install_signals(self) -> None:
        """Handlers only enqueue; the wake-up fd makes the loop's select return."""
        self.waker.wake_on_signals()
        self.selector.register(self.waker.reader, selectors.EVENT_READ, "wakeup")
        for sig in (*HANDLED, *NOT_OURS):
            signal.signal(sig, self._enqueue_signal)
        self.terminals = own_terminals()
        self.hung_up_until = 0.0
        # `farm up` held SIGHUP from its start (farm.cli): one sent since comes in now, a reload.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    def close_wakeups(self) -> None:
        """At the end of ``run``, however it ended: the wake-up fd given back and the loop's
        socket pair closed (left to the interpreter's exit, they were a ResourceWarning
        each under -X dev). A signal from here on is only recorded, as before."""
        signal.set_wakeup_fd(-1)  # the supervisor's own: install_signals set it
        self.selector.close()
        self.waker.close()

    def _enqueue_signal(self, signum: int, frame: object) -> None:
        self.pending.append(Pending(Duty.SIGNAL, signum))

    def _look_at_terminal(self) -> None:
        """Each turn (an ioctl, only where it was started in a terminal): a farm whose
        terminal went without a SIGHUP to it (`setsid`, `disown`) runs on, and a `kill -HUP`
        an hour later is the reload asked, not the hang-up's."""
        if self.terminals and hung_up(self.terminals):
            self.terminals, self.hung_up_until = [], time.monotonic() + HANGUP_WINDOW

    def handle_signals(self) -> None:
        self._look_at_terminal()
        while self.pending:
            item = self.pending.pop(0)
            hangup = item.action is Duty.SIGNAL and item.arg == signal.SIGHUP
            if hangup:
                self._look_at_terminal()  # again: it may have hung up since the look above
            if hangup and time.monotonic() < self.hung_up_until:
                # The SIGHUP of the terminal `farm up` runs in going away (its shell's, or the
                # kernel's to a session leader), not a reload asked: reloaded, the farm ran on
                # with no terminal, its log lost, holding its sockets, and the next `farm up`
                # was refused. It stops as on Ctrl-C, as a program run in a terminal ends with it.
                if not self.stopping:
                    log.info(
                        "the terminal hung up (SIGHUP): stopping: draining workers (grace %gs)",
                        self.grace,
                    )
                self.stopping = True
            elif item.action is Duty.RELOAD or hangup:
                self.answer_reload(item)
            elif item.action is Duty.STOP or item.arg in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:  # the line again read as a fresh grace from now
                    log.info("asked to stop again: still draining (SIGQUIT stops at once)")
                else:
                    log.info("stopping: draining workers (grace %gs)", self.grace)
                self.stopping = True
            elif item.arg == signal.SIGTSTP:
                self.pause_farm()
            elif item.arg in NOT_OURS:
                log.warning(
                    "%s ignored: SIGTERM stops the farm (draining), SIGHUP reloads its config,"
                    " SIGQUIT stops it at once",
                    signal.Signals(item.arg).name,
                )
            elif item.arg == signal.SIGQUIT:
                log.info("SIGQUIT: stopping at once")
                self.stopping, self.grace, self.quitting = True, 0.0, True
                self.quit_workers([*self.by_pid.values(), *self.leftovers])
                # Also cuts a drain already under way, and a wrapper's worker left after it.
                for proc in [*self.by_pid.values(), *self.leftovers]:
                    proc.stop_deadline = time.monotonic()
                for stray in self.strays.values():
                    stray.deadline = min(stray.deadline, time.monotonic())

    def pause_farm(self) -> None:
        """Ctrl-Z (SIGTSTP): the farm stops as a whole, as a program in the foreground does,
        and goes on at `fg` or `bg` (SIGCONT). The job server and the workers lead process
        groups of their own (so that Ctrl-C is the supervisor's to decide), so the terminal's
        SIGTSTP stopped the supervisor alone: they served on, nothing replaced a worker that
        died, and one with much output blocked on its pipe. Processes of another session (a
        pool run as another user) run on: stopped there, nothing would wake them were the
        supervisor killed meanwhile, where the kernel wakes a group of this session then
        (SIGHUP, SIGCONT: an orphaned group). Where no shell of its session could resume it
        (systemd's, `setsid farm up`: an orphaned group, where the kernel drops a SIGTSTP
        it would act on) it is said and ignored."""
        own = os.getsid(0)
        if _orphaned():
            log.warning("SIGTSTP ignored: farm up is no terminal's job (systemd's, setsid's)")
            return
        groups = []
        for pid in [self.server.pid, *self.by_pid, *(p.pid for p in self.leftovers)]:
            with contextlib.suppress(OSError):  # gone meanwhile
                if pid and os.getsid(pid) == own and (group := os.getpgid(pid)) != os.getpgrp():
                    os.killpg(group, signal.SIGSTOP)
                    groups.append(group)
        log.info(
            "paused (SIGTSTP, Ctrl-Z): farm up stops with the job server and its workers (%d"
            " processes and their children); fg or bg resumes them",
            len(groups),
        )
        paused = time.monotonic()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:  # to this thread: stopped before the call returns, the rest resumed after
            signal.pthread_kill(threading.get_ident(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, self._enqueue_signal)
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGCONT)
        paused = time.monotonic() - paused
        self._after_pause(paused)
        log.info("resumed after %.1fs paused", paused)

    def _after_pause(self, paused: float) -> None:
        """The clock went on while the whole farm stood: what is timed from a process's
        start or to a deadline moves on as much (a boot within boot_timeout, a reload's
        rollout, a drain within its grace, ready_wait), or `fg` judged the workers by time
        none of them ran: a booting worker was killed as hung, a draining one's job cut
        off. A pool's `timeout` is the wall clock's, as the job server's own is: not moved."""
        for proc in [*self.by_pid.values(), *self.leftovers]:
            proc.started += paused
            for name in _DEADLINES:
                if (value := getattr(proc, name)) is not None:
                    setattr(proc, name, value + paused)
        for stray in self.strays.values():
            stray.deadline += paused
        # Not the job server's start: a job in hand is dated by its worker (busy_since, read
        # from its record), and one begun before the server's start is its lost server's
        # (`farm ps`'s "server gone"); moved, jobs begun within the pause of it read so.
        self.started += paused


#: What a worker process is timed by, besides its start (farm.pools.slots.WorkerProcess).
_DEADLINES = ("stop_deadline", "exiting_since", "idle_draining", "signal_at", "remote_since")


def _orphaned() -> bool:
    """Whether this process's group is orphaned, so that no shell could resume it: the
    first process up its chain of parents outside its group is of another session (a
    shell of this session that runs it as a job is not). systemd's services, `setsid farm
    up`, `setsid sh -c 'farm up'` are; the kernel drops a default SIGTSTP there."""
    import psutil

    group, own = os.getpgrp(), os.getsid(0)
    pid = os.getpid()
    try:
        while os.getpgid(pid) == group:
            pid = psutil.Process(pid).ppid()
            if pid == 0:  # the top (farm up as a container's PID 1): no parent at all
                return True
        # PID 1 is judged as any parent: a shell with job control as a container's PID 1
        # (`docker run -it IMAGE bash`) runs farm up as its job.
        return os.getsid(pid) != own
    except (OSError, psutil.Error):
        return True
