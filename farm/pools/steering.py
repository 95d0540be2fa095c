"""What can change while the supervisor runs: `farm scale`, `farm ps`, reload.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from farm.config import Config, capacity_problem, load_config
from farm.errors import ConfigError
from farm.pools import sdnotify
from farm.pools.control import ControlConnection, parse_scale

if TYPE_CHECKING:
    from farm.pools.localserver import LocalServer
    from farm.pools.metrics import Exits
    from farm.pools.slots import Slot, WorkerProcess

__all__ = ["Steering", "Pending", "Duty"]

log = logging.getLogger("farm.supervisor")

STOPPED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


class Duty(enum.Enum):
    """What a pending item asks of the main loop."""

    SIGNAL = "signal"  # arg: the signal number
    RELOAD = "reload"  # `farm reload`: re-read the config, answer on conn
    STOP = "stop"  # `farm stop`: drain and exit


@dataclass
class Pending:
    """Work for the main loop: a signal, or a control request to run there."""

    action: Duty
    arg: Any = None
    conn: ControlConnection | None = field(default=None, repr=False)


class Steering:
    config: Config
    config_path: str | None
    slots: dict[str, list[Slot]]
    targets: dict[str, int]
    retiring: list[WorkerProcess]
    server: LocalServer
    pending: list[Pending]
    selector: selectors.BaseSelector
    started: float
    exits: Exits  # (pool, cause) -> workers replaced, for the metrics

    # Provided by Supervisor: lays a pool's slots onto cores (declared for the type checker).
    place: Callable[[Any], None]

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
        if cmd == "ping":
            conn.reply({"ok": True, "pid": os.getpid()})
        elif cmd == "ps":
            conn.reply({"ok": True, "processes": self.process_table(), "targets": self.targets})
        elif cmd == "scale":
            if conn.gone():
                log.warning("a scale request whose client has gone is not applied")
                conn.sock.close()
                return
            conn.reply(self.scale(message.get("changes")))
        elif cmd == "reload":
            self.pending.append(Pending(Duty.RELOAD, conn=conn))
        elif cmd == "stop":
            conn.reply({"ok": True, "pid": os.getpid()})
            self.pending.append(Pending(Duty.STOP))
        else:
            conn.reply({"ok": False, "usage": True, "error": f"unknown command {cmd!r}"})

    def scale(self, changes: Any) -> dict[str, Any]:
        """Apply ["resize=32", "reverse=+2", ...] to the targets, all or nothing."""
        if not isinstance(changes, list) or not changes:
            return {"ok": False, "usage": True, "error": "give NAME=COUNT, NAME=+N or NAME=-N"}
        targets = dict(self.targets)
        for change in changes:
            try:
                name, op, count = parse_scale(str(change))
            except ValueError as e:
                return {"ok": False, "usage": True, "error": str(e)}
            if name not in self.config.functions:
                known = ", ".join(self.config.functions) or "none"
                return {
                    "ok": False,
                    "usage": True,
                    "error": f"no function {name!r} in the config (known: {known})",
                }
            targets[name] = {"=": count, "+": targets[name] + count, "-": targets[name] - count}[op]
        problem = capacity_problem(
            self.config.functions, targets, self.config.supervisor.memory_budget_mb
        )
        if problem:
            return {"ok": False, "usage": True, "error": f"{' '.join(changes)}: {problem}"}
        for name, new in targets.items():
            if new != self.targets[name]:
                log.info("scaling %s from %d to %d workers", name, self.targets[name], new)
        self.targets = targets
        return {"ok": True, "targets": targets}

    def process_table(self) -> list[dict[str, Any]]:
        """Every process the supervisor runs, for `farm ps`."""
        now = time.monotonic()
        rows = [self.row(os.getpid(), "supervisor", None, None, "running", self.started, now)]
        if self.server.pid:
            state = "ready" if self.server.ready else "starting"
            rows.append(
                self.row(
                    self.server.pid,
                    "server",
                    None,
                    None,
                    state,
                    self.server.started,
                    now,
                    restarts=self.server.restarts,
                )
            )
        for slots in self.slots.values():
            for slot in slots:
                proc = slot.proc
                if proc is None:
                    state = "failing" if slot.failing else "backoff"
                    rows.append(
                        self.row(
                            0,
                            slot.function,
                            slot.index,
                            slot.core,
                            state,
                            None,
                            now,
                            restarts=slot.restarts,
                            last_exit=slot.last_exit,
                        )
                    )
                    continue
                rows.append(
                    self.process_row(proc, now, restarts=slot.restarts, last_exit=slot.last_exit)
                )
        rows += [self.process_row(proc, now) for proc in self.retiring]
        return rows

    def process_row(self, proc: WorkerProcess, now: float, **extra: Any) -> dict[str, Any]:
        """The `farm ps` row of a live worker process (in a slot, or retiring)."""
        proc.refresh()
        return self.row(
            proc.pid,
            proc.function,
            proc.slot,
            proc.core,
            proc.state,
            proc.started,
            now,
            jobs=proc.jobs_done,
            **extra,
        )

    @staticmethod
    def row(
        pid: int,
        function: str,
        slot: int | None,
        core: int | None,
        state: str,
        started: float | None,
        now: float,
        **extra: Any,
    ) -> dict[str, Any]:
        rss = 0
        if pid:
            try:
                process = psutil.Process(pid)
                rss = process.memory_info().rss
                if process.status() in STOPPED:
                    state = "stopped"  # SIGSTOP or a debugger: it serves nothing, whatever it said
            except psutil.Error:
                pass
        uptime = round(now - started, 1) if started is not None else None
        return {
            "pid": pid or None,
            "function": function,
            "slot": slot,
            "cpu": core,
            "state": state,
            "jobs": extra.get("jobs", 0),
            "rss": rss,
            "restarts": extra.get("restarts", 0),
            "uptime": uptime,
            "last_exit": extra.get("last_exit", ""),
        }

    def reload(self) -> str | None:
        """Re-read the config: apply changed counts, restart pools whose target/options changed."""
        sdnotify.notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            sdnotify.notify("READY=1")
            return str(e)
        old = self.config
        for section in ("server", "supervisor"):
            if getattr(new, section) != getattr(old, section):
                log.warning(
                    "reload: [%s] changed; that takes a restart (farm stop; farm up)", section
                )
        new = Config(
            source=new.source, server=old.server, supervisor=old.supervisor, functions=new.functions
        )
        self.config = new
        for name, pool in new.functions.items():
            before = old.functions.get(name)
            if before is None or before.workers != pool.workers:
                self.place(pool)
            if before is not None and before.options() != pool.options():
                log.info(
                    "reload: %s changed (target or options); its workers will be replaced", name
                )
                for slot in self.slots.get(name, ()):  # a fixed target need not wait out a backoff
                    slot.failures, slot.failing, slot.next_start = 0, False, 0.0
        for name in old.functions.keys() - new.functions.keys():
            log.info("reload: %s removed; draining its workers", name)
            self.targets.pop(name, None)
        log.info("reloaded %s", new.source)
        sdnotify.notify("READY=1")
        return None
