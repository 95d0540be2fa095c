"""The supervisor: the job server plus one pinned worker process per slot, kept alive.

Like gunicorn's arbiter, signal handlers and control requests only enqueue;
one short loop does the work and reads like the policy::

    handle_signals -> reap_workers -> kill_overrunning -> sweep_strays, tend_left_behind
                   -> tend_output -> manage_server -> manage_workers
                   -> watch_commands, advance_restarts -> notify_systemd
                   -> sweep_spill -> wait for events

Scaling changes a target number and ``manage_workers`` reconciles. The loop
is the only thread that changes anything (the metrics endpoint's HTTP server,
farm.pools.metricsendpoint, reads in threads of its own; children are forked and
exec'd by farm.pools.spawn); it waits in one selector on the signal wake-up
pipe, the control socket and each worker's report and output pipes. Its parts
live beside it in farm/pools: bookkeeping and the restart policy in ``slots``,
a worker's start in ``workerstart``, its life (retire, kill, reap) in ``lifecycle``,
`farm restart` in ``rollout``, what each signal means in ``signals``, what the control socket may
change in ``steering``, what it tells
systemd (READY=1, STATUS=) in ``readiness``, what outlives a worker (its detached
processes, ``sweep_strays``) in ``strays``, what a supervisor killed -9 left running in
``leftbehind``, a worker's output read and its floods paused
(``tend_output``) in ``reports``, and its duties for farm.Executor (key, spill files) in
``executorduties``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import time
from collections import Counter
from typing import Any

from farm.config import Config, FunctionConfig
from farm.pools import sdnotify
from farm.pools.bootcheck import children_environ, php_default_dials
from farm.pools.commandjobs import CommandJobs
from farm.pools.commandstart import CommandStart
from farm.pools.controlserver import ControlConnection, ControlServer, open_control
from farm.pools.executorduties import ExecutorDuties
from farm.pools.leftbehind import LeftBehind, instance_token
from farm.pools.lifecycle import POLL, TIMEOUT_GRACE, Lifecycle
from farm.pools.localserver import LocalServer, check_listen_name
from farm.pools.metrics import Exits
from farm.pools.metricsendpoint import serve_metrics
from farm.pools.places import check_server_places
from farm.pools.readiness import Readiness
from farm.pools.reloads import ReloadOutcome
from farm.pools.reports import Reports
from farm.pools.rollout import Restarting, Rollout
from farm.pools.signals import Signals
from farm.pools.slots import Slot, WorkerProcess, core_for
from farm.pools.steering import Pending, Steering
from farm.pools.strays import Strays
from farm.waker import Waker

__all__ = ["Supervisor"]

log = logging.getLogger("farm.supervisor")

#: How long the job server gets to exit on its graceful stop (SIGUSR1) before SIGKILL.
SERVER_STOP_TIMEOUT = 5.0
#: Workers started per turn of the loop at most: a pool scaled to hundreds starts over many
#: turns, and the control socket, signals and the watchdog are served between them.
SPAWNS_PER_TURN = 8


class Supervisor(
    Lifecycle,
    CommandStart,
    Reports,
    CommandJobs,
    Restarting,
    Steering,
    ExecutorDuties,
    Readiness,
    Strays,
    LeftBehind,
    Signals,
):
    """Runs the farm described by a :class:`~farm.config.Config` until told to stop."""

    def __init__(
        self, config: Config, config_path: str | None = None, log_format_flag: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path  # re-read on reload (None: the search order again)
        self.log_format_flag = log_format_flag  # `farm up --log-format`, laid over each reload
        self.slots: dict[str, list[Slot]] = {}
        self.targets: dict[str, int] = {}
        self.offsets: dict[str, int] = {}
        self.retiring: list[WorkerProcess] = []  # draining or killed, no longer in a slot
        self.leftovers: list[WorkerProcess] = []  # ended, its process group not yet
        self.rollout: Rollout | None = None  # the latest `farm restart`
        self.rollouts = 0
        self.kept_back: set[str] = set()
        self.reloaded_from: dict[str, FunctionConfig] = {}
        # A pool a reload removed, while its workers drain: they retire with its own grace.
        self.removed_pools: dict[str, FunctionConfig] = {}
        self.reloads = ReloadOutcome()  # the config read at start: applied
        self.polling = False  # a command worker starts or a restart runs: look again soon
        self.by_pid: dict[int, WorkerProcess] = {}
        self.spawned_before: dict[tuple[str, int], int] = {}  # (pool, slot) of slots let go
        # A command pool's (as farm up's own), and the job server's and the Python workers'
        # (python -P): no working directory on its PYTHONPATH. farm check loads targets in it.
        self.child_env, self.python_env, self.pythonpath_warnings = children_environ(
            config.executor
        )  # the warnings said in run(), once a running farm is named
        # In each worker's environment: what a supervisor killed -9 left running is stopped
        # by the next one of this farm (farm.pools.leftbehind).
        self.instance = instance_token(config.supervisor.control)
        self.left_behind = {}
        self.next_spill_sweep = 0.0
        self.server = LocalServer(
            config.server, self.python_env, log_format=config.supervisor.log_format
        )
        self.server.pool_functions = lambda: (
            f for pool in self.config.functions.values() for f in pool.functions
        )
        self.grace = config.supervisor.graceful_timeout
        self.pending: list[Pending] = []
        self.stopping = False
        self.quitting = False  # SIGQUIT: stopping at once (farm.pools.signals)
        self.exit_code = 0
        self.ready_sent = False
        self.extended_at = 0.0  # the last EXTEND_TIMEOUT_USEC, for a store's replay
        self.last_status = ""
        self.watchdog = sdnotify.Watchdog()
        self.started = time.monotonic()
        self.exits: Exits = Counter()
        self.metrics_server: Any = None
        self.metrics_error: str | None = None  # why [supervisor] metrics is not served
        self.selector = selectors.DefaultSelector()
        self.control: ControlServer | None = None
        self.waker = Waker()  # signals (and nothing else) wake the loop through it
        for pool in config.functions.values():
            self.place(pool)

    # -- the loop --

    def run(self) -> int:
        """Start, serve until SIGTERM / `farm stop`, drain, and return the exit code."""
        from setproctitle import setproctitle

        setproctitle("farm: supervisor")
        if self.config.local_server:  # before anything starts: exit 2, not restarted
            check_listen_name(self.config.server, self.config.source)
        # The control socket first: a second `farm up` on this config stops here, in one
        # line naming the supervisor that runs, before it warns about anything, and before
        # another user's says it may not write the store of a server it would not start.
        self.control = open_control(self.config.supervisor.control, self.config.source)
        if self.config.local_server:
            try:
                check_server_places(self.config.server, self.config.source)
            except BaseException:
                self.control.close()  # its path left free, as no `farm up` took it
                raise
        self.selector.register(self.control, selectors.EVENT_READ, "accept")
        self.install_signals()
        self.adopt_orphans()  # before the first child: what any of them detaches is ours
        log.info(  # where `farm ps` and `farm stop` reach it: the defaults choose it per user
            "supervisor %d starting (config: %s; control socket: %s)",
            os.getpid(),
            self.config.source,
            self.config.supervisor.control,
        )
        for warning in self.pythonpath_warnings + php_default_dials(self.config):
            log.warning("%s", warning)
        self.stop_left_behind()  # holding the control socket: no other supervisor of ours runs
        if self.config.local_server:
            self.server.say_where_jobs_are_kept()
        if not self.config.functions:  # allowed (a server alone), but rarely what was meant
            log.warning("no pools in [functions]: the job server runs without workers")
        self.start_metrics()
        self.ensure_executor_key()
        self.note_spill_env()
        while True:
            self.handle_signals()
            if self.stopping:
                return self.shutdown()
            self.reap_workers()
            self.kill_overrunning()
            self.sweep_strays(time.monotonic())  # every SWEEP_EVERY: it reads /proc
            self.tend_left_behind(time.monotonic())
            self.tend_output()
            self.manage_server()
            self.manage_workers()
            self.polling = self.watch_commands() | self.advance_restarts()
            self.notify_systemd()
            self.sweep_spill()
            self.wait(self.next_wakeup())

    def start_metrics(self) -> None:
        """Serve /metrics ([supervisor] metrics); a port in use is a warning, not a stop."""
        where = self.config.supervisor.metrics
        if where is None:
            return
        try:
            self.metrics_server = serve_metrics(self, where)
        except OSError as exc:
            # Kept for `farm ps` and `farm top`, which otherwise read "not served" as "off".
            self.metrics_error = f"cannot serve on {where} ({exc})"
            log.warning("metrics: %s; going on without them", self.metrics_error)

    def reap_workers(self) -> list[WorkerProcess]:
        """Collect every exited child; a slot's worker is restarted by ``manage_workers``.
        All are collected first, the server's end handled before its workers': a command
        worker that ends as its connection to the killed server closes is then judged as
        one that lost its server (LocalServer.lost_by), not as a crash, whichever of the
        two ends waitpid returned first."""
        ended: list[tuple[int, int]] = []
        reaped: list[WorkerProcess] = []  # the workers: a stop's report names those killed
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended.append((pid, status))
        ended.sort(key=lambda end: end[0] != self.server.pid)  # stable: the rest in order
        for pid, status in ended:
            if pid == self.server.pid:
                self.server_ended(status)
            elif pid in self.by_pid:
                reaped.append(self.by_pid.pop(pid))
                self.worker_exited(reaped[-1], status)
            else:
                self.stray_reaped(pid)  # adopted (farm.pools.strays), or nothing we watch
        return reaped

    def server_ended(self, status: int) -> None:
        """The local server's end, reaped (here, or by a worker's end: Lifecycle). One that
        never listened stops the farm: its exit 2 (a store refused) too, not restarted."""
        self.server.exited(status, farm_stops=self.stopping)
        if not self.server.ever_ready and not self.stopping:  # retrying will not help
            log.error("the job server could not start; see its message above")
            self.stopping, self.exit_code = True, 2 if os.waitstatus_to_exitcode(status) == 2 else 1

    def manage_server(self) -> None:
        """Start the local job server, and notice when it accepts connections."""
        if not self.config.local_server or self.stopping:
            return
        srv = self.server
        if not srv.pid and time.monotonic() >= srv.next_start:
            srv.spawn()
        elif srv.pid and not srv.ready:
            srv.read_progress()  # its store's replay: what extends systemd's start (readiness)
            if srv.accepts():
                srv.answered(time.monotonic())
                where = ", ".join(self.config.server.listen)
                log.info("job server (pid %d) accepts on %s", srv.pid, where)
        elif srv.ready:  # the functions of pools a reload added: labelled from now on
            srv.name_new_functions(time.monotonic())

    def manage_workers(self) -> None:
        """Bring every pool to its target: add and remove slots, fill empty ones."""
        if self.config.local_server and not self.server.ready:
            return  # workers would only spin on connection refused
        now = time.monotonic()
        spawns = SPAWNS_PER_TURN  # the rest next turn: signals and `farm ps` answer meanwhile
        for name, slots in list(self.slots.items()):  # a removed pool's entry goes below
            pool = self.config.functions.get(name)
            target = self.targets.get(name, 0) if pool else 0
            while len(slots) > target:
                slot = slots.pop()
                self.spawned_before[name, slot.index] = slot.spawned
                for proc in (slot.proc, slot.successor):
                    if proc is not None:
                        self.retire(proc, pool or self.removed_pools.get(name))
            if pool is None:  # removed: its slots all went just now, with its grace
                self.removed_pools.pop(name, None)
                self.forget_pool(name)
                continue
            for index in range(len(slots), target):
                core = core_for(self.config.supervisor.cpus, self.offsets[name], index)
                # Its processes count on from the slot's last ones: FARM_WORKER_ID names one
                # process of this farm, whose detached ones live while it does (strays).
                spawned = self.spawned_before.pop((name, index), 0)
                slots.append(Slot(name, index, core, spawned=spawned))
            for slot in slots:
                slot.note_healthy(now)
                proc = slot.proc
                if (
                    proc is not None
                    and pool is not None
                    and proc.options != pool.options()
                    and not self.rolling(name)  # a reload's rollout replaces it
                    and name not in self.kept_back  # its new options did not boot
                ):
                    log.info("worker %s: target or options changed; replacing it", proc.name)
                    self.retire(proc, pool)
                    slot.proc, slot.next_start = None, 0.0
                if slot.proc is None and pool is not None and now >= slot.next_start:
                    if not spawns:
                        return  # next turn: next_wakeup sees the empty slots due now
                    spawns -= 1
                    self.spawn_worker(slot, pool)

    def next_wakeup(self) -> float:
        """Sleep until the next timed duty: a restart, a timeout, a drain deadline, a ping."""
        now = time.monotonic()
        if self.config.local_server and self.server.pid and not self.server.ready:
            return POLL  # polling the new server for readiness
        if self.polling:
            return POLL  # a command worker's connection, a successor's readiness
        times = [s.next_start for pool in self.slots.values() for s in pool if s.proc is None]
        for proc in self.by_pid.values():
            if proc.timeout and proc.busy_since:
                times.append(proc.busy_since + proc.timeout + TIMEOUT_GRACE)
            if proc.stop_deadline is not None:
                times.append(proc.stop_deadline)
            if (until := self.linger_deadline(proc)) is not None:  # stuck_idle, EXITING
                times.append(until)
            if proc.output_resume is not None:  # a flood's pipe, read again after a pause
                times.append(proc.output_resume)
        times += [p.stop_deadline for p in self.leftovers if p.stop_deadline is not None]
        times += self.stray_deadlines() + self.left_behind_deadlines()
        if not self.server.pid and self.config.local_server:
            times.append(self.server.next_start)
        commands = self.command_wakeup(now)  # a command worker drains, or has a timeout
        if commands is not None:
            times.append(now + commands)
        delay = min([t - now for t in times] + [1.0])
        ping = self.watchdog.due_in(now)
        return max(0.0, min(delay, ping if ping is not None else delay))

    def wait(self, timeout: float) -> None:
        if self.control is not None:  # a listener paused back, silent clients dropped
            timeout = min(timeout, self.control.tend(self.selector, time.monotonic()))
        for key, _ in self.selector.select(timeout):
            if key.data == "wakeup":
                self.waker.drain()
            elif key.data == "accept" and self.control is not None:
                self.control.take(self.selector)
            elif isinstance(key.data, ControlConnection):
                try:
                    self.read_request(key.data)
                except Exception as exc:
                    # A bug in one command must cost that command, never the farm and the
                    # jobs its workers hold (a scale during the drain once did). Its client
                    # is told why: at the descriptor limit `farm ps` read "closed early".
                    log.exception("control request failed; the farm goes on")
                    with contextlib.suppress(KeyError, ValueError):  # if still registered
                        self.selector.unregister(key.fileobj)
                    key.data.reply({"ok": False, "error": f"the supervisor failed it: {exc}"})
            elif isinstance(key.data, WorkerProcess):
                self.read_pipe(key.data, key.fd)

    # -- stopping --

    def shutdown(self) -> int:
        """Drain every worker (SIGKILL past the grace period), then stop the server."""
        sdnotify.notify("STOPPING=1")
        for name, slots in self.slots.items():
            for slot in slots:
                for proc in (slot.proc, slot.successor):
                    if proc is not None:
                        # A command worker: its pool's grace; else the farm's (by what the
                        # process is: a reload may have changed the pool's kind meanwhile).
                        # After SIGQUIT none (self.grace is 0): a command worker drained for
                        # its pool's grace, and SIGQUIT before SIGTERM did not stop it at once.
                        grace = None if proc.command and not self.quitting else self.grace
                        pool = self.config.functions.get(name) or self.removed_pools.get(name)
                        self.retire(proc, pool, grace=grace)
            slots.clear()
        self.targets.clear()
        # A wrapper's worker drains on after its shell; what a worker detached is stopped
        # once that worker ended (farm.pools.strays).
        while self.by_pid or self.leftovers or self.strays_left() or self.left_behind:
            self.notify_stopping()  # a long drain is not a hang; STATUS= says how it goes
            self.handle_signals()  # a second SIGTERM or SIGQUIT shortens the grace
            reaped = self.reap_workers()
            self.kill_overrunning()
            # Now, not every 2 s: what a worker just reaped detached is counted in the report.
            self.sweep_strays(time.monotonic(), stopping=True)
            self.tend_left_behind(time.monotonic())
            self.tend_output()  # a flood's paused pipe: its job's writes wait on it
            self.report_drain(reaped)  # `farm stop`: workers left, seconds left, what was killed
            if self.by_pid or self.leftovers or self.strays or self.left_behind:
                self.wait(min(0.5, max(0.05, self.next_wakeup())))
        self.report_drain([], final=True)
        if self.server.pid:
            sdnotify.notify("STATUS=stopping: the job server stops", wait=0)
            # Its graceful stop, then SIGKILL (stopped, hung): reaped either way, its end said.
            for send in (self.server.stop, self.server.kill):
                send()
                deadline = time.monotonic() + SERVER_STOP_TIMEOUT
                while self.server.pid and time.monotonic() < deadline:
                    self.reap_workers()
                    self.wait(0.05)
        self.close_control()  # and the record that it runs: a clean stop (leftbehind)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        log.info("supervisor stopped")
        return self.exit_code
