"""The supervisor's process table, `farm ps`: a row for the supervisor, the job server
(also while it waits out a backoff), every slot (a worker, or why there is none) and the
processes beside them (a `farm restart` successor, workers retiring). A mixin of
:class:`farm.pools.steering.Steering`, which answers the control socket's ``ps`` with it.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psutil

from farm.net import parse_address
from farm.pools.proctree import tree_rss
from farm.pools.slots import ProcState

if TYPE_CHECKING:
    from farm.config import Config
    from farm.pools.localserver import LocalServer
    from farm.pools.slots import Slot, WorkerProcess

__all__ = ["ProcessTable", "STOPPED", "TcpSnapshot", "remote_closed"]

STOPPED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


class TcpSnapshot:
    """The host's TCP connections by pid, read at most once per `farm ps`: psutil parses the
    kernel's whole table at each call, for one process or for all (some 50 ms with 4,000
    connections on the host), and a remote-only farm may have dozens of busy workers."""

    def __init__(self) -> None:
        self._by_pid: dict[int, list[Any]] | None = None

    def of(self, pid: int) -> list[Any]:
        """``pid``'s TCP connections (none: all closed, or the process is gone)."""
        if self._by_pid is None:
            by_pid: dict[int, list[Any]] = {}
            for c in psutil.net_connections(kind="tcp"):
                if c.pid is not None:
                    by_pid.setdefault(c.pid, []).append(c)
            self._by_pid = by_pid
        return self._by_pid.get(pid, [])


def remote_closed(pid: int, server: str, servers: Sequence[str], tcp: TcpSnapshot) -> bool:
    """Whether process ``pid`` holds no open TCP connection to ``server`` (one of its
    ``servers``) any more: the server closed it (CLOSE_WAIT: a busy worker reads nothing,
    so the server's FIN waits there unread) or it is gone. A server that vanished without
    closing (its host powered off, the network cut) is not seen: TCP itself does not know
    yet. False where it cannot be told cheaply: a Unix socket (its client end names no
    path), a host name on a port another of ``servers`` shares (telling them apart would
    take a DNS lookup in the supervisor's loop), a process psutil may not read."""
    addr = parse_address(server)
    if addr.kind != "tcp":
        return False
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(addr.host)
    except ValueError:
        ip = None
        tcp_servers = [parse_address(s) for s in servers if parse_address(s).kind == "tcp"]
        if sum(a.port == addr.port for a in tcp_servers) > 1:
            return False
    try:
        conns = tcp.of(pid)
    except psutil.Error:
        return False
    return not any(
        c.raddr
        and c.raddr.port == addr.port
        and c.status == psutil.CONN_ESTABLISHED
        and (ip is None or ipaddress.ip_address(c.raddr.ip.removeprefix("::ffff:")) == ip)
        for c in conns
    )


class ProcessTable:
    """Rows of `farm ps` (see the module docstring)."""

    # The supervisor's, read here (declared for the type checker).
    config: Config
    server: LocalServer
    slots: dict[str, list[Slot]]
    retiring: list[WorkerProcess]
    started: float
    stopping: bool  # draining to stop (SIGTERM, `farm stop`)
    metrics_server: Any  # the /metrics HTTP server (farm.pools.metricsendpoint), None when off
    _tcp: TcpSnapshot  # set by process_table, a fresh one at each call

    def process_table(self) -> list[dict[str, Any]]:
        """Every process the supervisor runs, for `farm ps`."""
        now = time.monotonic()
        self._tcp = TcpSnapshot()  # read if a busy worker's job came from a remote server
        # "stopping" while it drains: a long `systemctl stop` read "running" here.
        state = "stopping" if self.stopping else "running"
        rows = [self.row(os.getpid(), "supervisor", None, None, state, self.started, now)]
        if self.config.local_server:  # a server waiting out its backoff has a row too
            srv = self.server
            state = ("ready" if srv.ready else "starting") if srv.pid else "backoff"
            rows.append(
                self.row(
                    srv.pid,
                    "server",
                    None,
                    None,
                    state,
                    srv.started if srv.pid else None,
                    now,
                    restarts=srv.restarts,
                    last_exit=srv.last_exit,
                    # Its replay's pipe still open: `farm status` says it replays its store,
                    # which none does with store = "none".
                    replaying=bool(srv.pid and not srv.ready and srv.progress_fd >= 0)
                    and srv.config.store != "none",
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
                else:
                    extra = {"restarts": slot.restarts, "last_exit": slot.last_exit}
                    rows.append(self.process_row(proc, now, **extra))
                # `farm restart`: its replacement, starting (also when the old one died)
                if slot.successor is not None:
                    rows.append(self.process_row(slot.successor, now))
        rows += [self.process_row(proc, now) for proc in self.retiring]
        return rows

    def metrics_address(self) -> str | None:
        """HOST:PORT the /metrics endpoint listens on (the real port when configured as 0)."""
        if self.metrics_server is None:
            return None
        host, port = self.metrics_server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

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
            job=proc.handle or None,
            busy_for=round(now - proc.busy_since, 1) if proc.busy_since is not None else None,
            server_gone=self.server_gone(proc),
            # A running command worker: whether the local server showed its registration.
            checked=proc.registration_seen if proc.state is ProcState.RUNNING else None,
            # A starting command worker connected that registered other names: why it does
            # not serve, as the log said it, for `farm reload` and `farm ps` to say too; final
            # once it asks for jobs with those (else "so far": more may follow).
            not_serving=proc.misregistered if proc.state is ProcState.STARTING else "",
            not_serving_final=proc.state is ProcState.STARTING and proc.misregistered_final,
            tree=proc.command,  # its RSS: the command's and what it started, summed
            **extra,
        )

    def server_gone(self, proc: WorkerProcess) -> bool:
        """Whether the job in hand came from a server that has died since (a worker runs it
        to its end, and only then sees its connection gone): nobody takes its answer, and
        the server that replaced it runs a stored job again. The local server is first in
        every Python worker's list (Config.servers_for): its restarts are the supervisor's
        own. A remote one's end is seen in the worker's connection to it (remote_closed),
        read here, when `farm ps` asks, never on a job's path."""
        if proc.busy_since is None or not proc.job_server:
            return False
        if proc.job_server == 1 and self.config.local_server:
            # One clock for all processes (CLOCK_MONOTONIC): a job the server now running
            # handed out began after that server was started.
            return not self.server.pid or proc.busy_since < self.server.started
        if proc.job_server > len(proc.servers):
            return False
        return remote_closed(proc.pid, proc.servers[proc.job_server - 1], proc.servers, self._tcp)

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
                # A command worker's slot holds its tree: a wrapper's worker is its memory.
                rss = tree_rss(pid) if extra.get("tree") else process.memory_info().rss
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
            "job": extra.get("job"),  # the handle of the job in hand, if any
            "busy_for": extra.get("busy_for"),  # seconds it has run
            "server_gone": extra.get("server_gone", False),  # its job's server has died since
            "checked": extra.get("checked"),  # False: running, its registration not seen
            "replaying": extra.get("replaying", False),  # the job server's store, at its start
            "not_serving": extra.get("not_serving", ""),  # a starting one: why, when known
            "not_serving_final": extra.get("not_serving_final", False),  # ... for good
        }
