"""What can change while the supervisor runs: `farm scale`, `farm ps`, reload, restart.

A mixin of :class:`farm.supervisor.Supervisor`, split off to keep the main
loop's module short. Requests arrive on the control socket (farm.pools.control);
scaling only changes target numbers, which ``manage_workers`` reconciles;
``reload`` runs from the loop, like SIGHUP.
"""

from __future__ import annotations

import enum
import logging
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from farm.config import RESTART_TABLES, Config, FunctionConfig, load_config
from farm.config.capacity import auto_workers, scale_problem
from farm.config.defaults import DEFAULTS_SOURCE
from farm.config.rules import on_running_farm
from farm.discovery import find_config
from farm.errors import ConfigError
from farm.pools import sdnotify
from farm.pools.control import another_farm, other_form, parse_scale, restart_picks
from farm.pools.controlserver import ControlConnection
from farm.pools.pstable import ProcessTable

if TYPE_CHECKING:
    from farm.pools.exits import Exits
    from farm.pools.localserver import LocalServer
    from farm.pools.reloads import ReloadOutcome
    from farm.pools.slots import Slot, WorkerProcess

__all__ = ["Steering", "Pending", "Duty"]

log = logging.getLogger("farm.supervisor")


class Duty(enum.Enum):
    """What a pending item asks of the main loop."""

    SIGNAL = "signal"  # arg: the signal number
    RELOAD = "reload"  # `farm reload`: re-read the config, answer on conn (arg "restart":
    # then replace every worker, as `farm reload --restart`)
    STOP = "stop"  # `farm stop`: drain and exit


@dataclass
class Pending:
    """Work for the main loop: a signal, or a control request to run there."""

    action: Duty
    arg: Any = None
    conn: ControlConnection | None = field(default=None, repr=False)


class Steering(ProcessTable):
    config: Config
    config_path: str | None
    log_format_flag: str | None  # `farm up --log-format`: outranks the file's log_format
    slots: dict[str, list[Slot]]
    targets: dict[str, int]
    offsets: dict[str, int]  # each pool's first core (Supervisor.place)
    retiring: list[WorkerProcess]
    server: LocalServer
    pending: list[Pending]
    selector: selectors.BaseSelector
    started: float
    exits: Exits  # (pool, cause) -> workers replaced, for the metrics
    # Pools whose new target or options did not boot in a reload's rollout: their running
    # workers keep the old ones until a rollout tries the pool again (rollout.fail_pool).
    kept_back: set[str]
    reloaded_from: dict[str, FunctionConfig]  # what a reload's changed pools ran before
    removed_pools: dict[str, FunctionConfig]  # removed by a reload: their workers' grace
    # Whether the latest reload applied its file, when one last did, what of it waits for a
    # restart: for the metrics, as a refused file otherwise shows in the log only.
    reloads: ReloadOutcome
    metrics_server: Any  # the /metrics HTTP server (farm.pools.metricsendpoint), None when off
    metrics_error: str | None  # why it is None although the config asked for one
    by_pid: dict[int, WorkerProcess]
    ready_sent: bool  # READY=1 told systemd the start is done (farm.pools.readiness)
    stopping: bool  # draining to stop: nothing new starts, nothing may be scaled or replaced
    # `farm stop` clients that follow the drain, the workers it killed, when they last heard.
    drain_followers: tuple[ControlConnection, ...] = ()
    drain_killed: tuple[dict[str, Any], ...] = ()
    drain_told: float = 0.0

    # Provided by Supervisor: lays a pool's slots onto cores (declared for the type checker).
    place: Callable[[Any], None]
    # Provided by CommandJobs (farm.pools.commandjobs): command workers' jobs, from the server.
    track_commands: Callable[..., None]
    # Provided by Restarting (farm.pools.rollout): `farm restart`.
    start_restart: Callable[[dict[str, list[int] | None]], dict[str, Any]]
    restart_status: Callable[[], dict[str, Any]]
    add_to_restart: Callable[[list[str]], dict[str, Any]]
    rolling_any: Callable[[], bool]
    # Provided by Strays (farm.pools.strays): the workers and detached processes left.
    drain_left: Callable[[], tuple[int, int, list[float]]]

    def answer_reload(self, item: Pending) -> None:
        """A reload asked (SIGHUP, `farm reload`, `--restart`): apply the file, reply."""
        error: str | None
        kept: list[str] = []
        changed: list[str] = []
        usage = False
        before = self.config.functions
        if self.stopping:  # nothing new starts while it drains: nothing to apply
            log.info("reload asked while stopping: ignored")
            error = "the farm is stopping; nothing was reloaded"
        elif item.arg == "restart" and self.rolling_any():
            # Refused before the file is applied: replacing every worker is refused
            # while a restart runs, and a half-done reload would drain changed pools.
            error = "a restart is under way; nothing was reloaded (wait for it)"
        else:
            error, kept, changed = self.reload()
            usage = True  # a bad config: exit 2, as for `farm up`
        reply: dict[str, Any] = {"ok": error is None, "not_applied": kept}
        if not error and not kept and not changed and self.config.functions == before:
            # Said: an operator who edited a worker's code and reloaded would read
            # "reloaded" while the old code went on running.
            reply["unchanged"] = True
        if error:
            reply["error"] = error
            reply["usage"] = usage
        elif item.arg == "restart":  # `farm reload --restart`: every worker
            reply = {
                **self.start_restart(
                    restart_picks([], self.config.functions, self.targets, self.pool_named)
                ),
                "not_applied": kept,
            }
        elif changed:
            # The pools it changed are replaced as `farm restart` does: each new
            # process beside the old one, which keeps its slot if it does not boot.
            if self.rolling_any():
                rollout = self.add_to_restart(changed)
            else:
                rollout = self.start_restart(dict.fromkeys(changed))
            reply = {**rollout, "not_applied": kept}
        added = [n for n in self.config.functions.keys() - before.keys() if self.targets.get(n)]
        if added and not error:
            # `farm reload` follows them to their first serve (farm.cli.deploy.follow_added):
            # a pool added with a module that raises, or a command that exits, was "reloaded"
            # and exit 0 (`systemctl reload` succeeded) while it crash-looped.
            reply["added"] = sorted(added)
            reply["boot_timeout"] = self.config.supervisor.boot_timeout
        if item.conn is not None:
            item.conn.reply(reply)

    def read_request(self, conn: ControlConnection) -> None:
        try:
            message = conn.read()
        except EOFError:
            self.selector.unregister(conn)
            conn.sock.close()
            return
        if message is None:
            return
        self.selector.unregister(conn)
        cmd = message.get("cmd")
        # Its client's config (-c) is another farm's sharing this socket: a usage mistake.
        if (asked := message.get("config")) and (
            why := another_farm(
                cmd, str(asked), self.rereads(), os.getpid(), str(message.get("named_by", "-c"))
            )
        ):
            conn.reply({"ok": False, "usage": True, "error": why})
            return
        if cmd == "ping":
            # The file it re-reads: a command whose config names a control socket no one
            # answers on finds the farm it meant by it (control.answering_elsewhere).
            conn.reply({"ok": True, "pid": os.getpid(), "config": self.rereads()})
        elif cmd == "ps":
            self.track_commands(everyone=True)  # command workers' jobs, from the job server
            conn.reply(
                {
                    "ok": True,
                    "processes": self.process_table(),
                    "targets": self.targets,
                    "serves": {n: pool.functions for n, pool in self.config.functions.items()},
                    "metrics": self.metrics_address(),
                    "metrics_error": self.metrics_error,
                }
            )
        elif cmd == "scale":
            if conn.gone():
                log.warning("a scale request whose client has gone is not applied")
                conn.sock.close()
                return
            if self.stopping:  # its pools' targets are gone: nothing would start anyway
                conn.reply({"ok": False, "error": "the farm is stopping; nothing was scaled"})
                return
            conn.reply(self.scale(message.get("changes")))
        elif cmd == "reload":  # of its own file ("reloaded" would claim a named one applied)
            restart = "restart" if message.get("restart") else None
            self.pending.append(Pending(Duty.RELOAD, restart, conn=conn))
        elif cmd == "restart":
            if self.stopping:
                conn.reply({"ok": False, "error": "the farm is stopping; nothing was restarted"})
                return
            try:
                picks = restart_picks(
                    message.get("names") or [], self.config.functions, self.targets, self.pool_named
                )
            except ValueError as e:
                conn.reply({"ok": False, "usage": True, "error": str(e)})
                return
            conn.reply(self.start_restart(picks))
        elif cmd == "restart-status":
            conn.reply(self.restart_status())
        elif cmd == "stop":
            if message.get("follow") and conn.send({"ok": True, "pid": os.getpid()}):
                self.drain_followers = (*self.drain_followers, conn)  # report_drain tells it
            else:
                conn.reply({"ok": True, "pid": os.getpid()})
            self.pending.append(Pending(Duty.STOP))
        else:
            conn.reply({"ok": False, "usage": True, "error": f"unknown command {cmd!r}"})

    def scale(self, changes: Any) -> dict[str, Any]:
        """Apply ["resize=32", "reverse=+2", ...] to the targets, all or nothing."""
        if not isinstance(changes, list) or not changes:
            return {"ok": False, "usage": True, "error": "give NAME=COUNT, NAME=+N, -N or auto"}
        targets = dict(self.targets)
        named: dict[str, str] = {}  # pool -> the name it was given by
        for change in changes:
            try:
                given, op, count = parse_scale(str(change))
                name = self.pool_named(given)
            except ValueError as e:
                return {"ok": False, "usage": True, "error": str(e)}
            if name in named:  # by its table and a function it serves: the last one won
                twice = f"pool {name} is named twice ({named[name]}, {given})"
                return {
                    "ok": False,
                    "usage": True,
                    "error": f"{change}: {twice}; give one change per pool",
                }
            named[name] = given
            if count is None:  # auto: one per core the farm pins to, as workers = "auto"
                count = auto_workers(self.config.supervisor.cpus)
            targets[name] = {"=": count, "+": targets[name] + count, "-": targets[name] - count}[op]
        problem = scale_problem(
            self.config.functions, targets, self.targets, self.config.supervisor.memory_budget_mb
        )
        if problem:
            return {"ok": False, "usage": True, "error": f"{' '.join(changes)}: {problem}"}
        for name, new in targets.items():
            if new != self.targets[name]:
                log.info("scaling %s from %d to %d workers", name, self.targets[name], new)
        self.targets = targets
        return {"ok": True, "targets": targets}

    def pool_named(self, name: str) -> str:
        """The pool ``name`` means: its table name, or a function exactly one pool serves."""
        pools = self.config.functions
        if name in pools:
            return name
        serving = [p.name for p in pools.values() if name in p.functions]
        if len(serving) == 1:
            return serving[0]
        if serving:
            raise ValueError(
                f"function {name!r} is served by pools {', '.join(serving)}; name one of them"
            )
        known = ", ".join(pools) or "none"
        # Its file: a `-c` naming another config with the same control socket reached this farm.
        where = self.config_path or self.config.source
        hint = other_form(name, [*pools, *(f for p in pools.values() for f in p.functions)])
        raise ValueError(
            f"no pool or function {name!r} in this farm's {where} (pools: {known}){hint}"
        )

    def report_drain(self, reaped: list[WorkerProcess], *, final: bool = False) -> None:
        """Tell `farm stop` how the drain goes: workers left, seconds left, what was killed
        (a few times a second, and once more when the last worker is gone): SIGKILLed, or
        ``reaped`` with a reason (a command worker whose stop signal cut its job off)."""
        now = time.monotonic()
        seen = {k["pid"] for k in self.drain_killed}
        self.drain_killed += tuple(  # a kill_reason: the supervisor killed it (slots)
            {"pid": p.pid, "worker": p.name, "reason": p.kill_reason}
            for p in [*self.by_pid.values(), *reaped]
            if p.kill_reason and p.pid not in seen
        )
        if not self.drain_followers or (not final and now - self.drain_told < 0.25):
            return
        self.drain_told = now
        workers, detached, deadlines = self.drain_left()
        news: dict[str, Any] = {"workers": workers, "detached": detached}
        news["killed"] = list(self.drain_killed)
        news["seconds_left"] = round(max(deadlines) - now, 1) if deadlines else None
        if final:
            news["done"] = True
        self.drain_followers = tuple(c for c in self.drain_followers if c.send(news))
        if final:
            for conn in self.drain_followers:
                conn.sock.close()
            self.drain_followers = ()

    def rereads(self) -> str:
        """The file a reload reads: the one named at start, else the search order's now."""
        try:
            found = find_config(self.config_path)
            # Whole: a ./farm.toml found later, read against a directory that may go.
            return os.path.abspath(found) if found is not None else DEFAULTS_SOURCE
        except Exception:  # gone or refused: the reload itself says so
            # Whole (farm.cli.supervise.up); config.source is as given, as farm check says it.
            return self.config_path or self.config.source

    def forget_pool(self, name: str) -> None:
        """A pool a reload removed has had its last slot retired: what was kept of it goes
        too. Its target and restarts stayed on the metrics endpoint for the farm's life, and
        a pool of that name added later counted on from them; now it starts as a new pool,
        on cores placed anew. Its draining workers are counted while they drain (retiring)."""
        self.slots.pop(name, None)
        self.offsets.pop(name, None)
        for key in [key for key in self.exits if key[0] == name]:
            del self.exits[key]

    def reload(self) -> tuple[str | None, list[str], list[str]]:
        """Re-read the config: apply changed counts; pools whose target or options changed
        are to be replaced. Returns why it refused the file (None: applied), what it did
        not apply, and the pools whose workers are to be replaced."""
        # Before READY=1 (a SIGHUP held from `farm up`'s start) the start is what systemd
        # waits for: READY=1 at the reload's end had ended it before the server listened.
        told = self.ready_sent
        if told:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={now}")
        old = self.config
        restart = sdnotify.restart_command()  # under systemd, its unit's: not farm up by hand
        try:
            loaded = load_config(self.config_path)
            if self.log_format_flag is not None:  # not a change of the file: the flag rules
                flag = self.log_format_flag
                loaded = replace(loaded, supervisor=replace(loaded.supervisor, log_format=flag))
            new = on_running_farm(loaded, old, restart)  # only the pools change while it runs
        except Exception as e:  # a ConfigError; anything else must not end the running farm
            why = str(e) if isinstance(e, ConfigError) else f"{self.config_path}: {e!r}"
            if not isinstance(e, ConfigError):
                log.exception("reading the config failed")
            log.error("reload failed, keeping the running config: %s", why)
            self.reloads.refused()
            if told:
                sdnotify.notify("READY=1")
            return why, [], []
        kept = []
        for section in RESTART_TABLES:
            if getattr(loaded, section) != getattr(old, section):
                kept.append(f"[{section}] changed; that takes a restart ({restart})")
                log.warning("reload: %s", kept[-1])
        self.config = new
        # Pools kept on their old options stay so until a rollout tries them again (one
        # that changed now gets one below); a removed pool is gone.
        self.kept_back &= new.functions.keys()
        changed, added = [], [n for n in new.functions if n not in old.functions]
        for name, pool in new.functions.items():
            before = old.functions.get(name)
            if before is None or before.workers != pool.workers:
                # Said as removals are: `systemctl reload` shows what it did in the journal.
                was = self.targets.get(name, 0)
                self.place(pool)
                log.info(
                    "reload: %s %s %d workers",
                    name,
                    f"from {was} to" if before else "added:",
                    pool.workers,
                )
            if before is not None and before.options() != pool.options():
                log.info(
                    "reload: %s changed (target or options); its workers will be replaced", name
                )
                changed.append(name)
                self.reloaded_from[name] = before  # what its running workers run
                for slot in self.slots.get(name, ()):  # a fixed target need not wait out a backoff
                    slot.failures, slot.failing, slot.next_start = 0, False, 0.0
        for name in new.functions.keys() & self.removed_pools.keys():
            del self.removed_pools[name]  # back before its workers were retired
        for name in old.functions.keys() - new.functions.keys():
            self.reloaded_from.pop(name, None)
            self.removed_pools[name] = old.functions[name]
            log.info("reload: %s removed; draining its workers", name)
            self.targets.pop(name, None)
        if starting := [*added, *changed]:  # a reload is done once they serve, if they do
            log.info(
                "reload of %s applied; new workers of %s start now", new.source, ", ".join(starting)
            )
        else:
            log.info("reloaded %s", new.source)
        self.reloads.applied(kept)  # until a changed pool does not boot (rollout.fail_pool)
        if told:
            sdnotify.notify("READY=1")
        return None, kept, changed
