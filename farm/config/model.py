"""What a loaded farm.toml is: frozen dataclasses, and where each pool's workers connect.

Reading and checking the file is :mod:`farm.config.parse`'s job; these classes only hold
the result and answer questions about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from farm.commandspec import CommandSpec
from farm.executor.spillsettings import DEFAULT_MAX_AGE, DEFAULT_MAX_SPILL_MB, DEFAULT_ORPHAN_AGE
from farm.net import DEFAULT_SERVER, Address, connectable, parse_address
from farm.protocol.codec import RESERVED_PREFIX

__all__ = [
    "Config",
    "ServerConfig",
    "SupervisorConfig",
    "FunctionConfig",
    "READY_WAIT",
    "RESTART_TABLES",
    "RESTART_TABLES_SAID",
    "TCP_ADMIN",
]

#: The tables a reload does not apply: a change in one takes a restart of the farm. The
#: one list: the reload keeps them by it (farm.pools.steering, config.rules.on_running_farm),
#: and `farm check` and the reload's lines name them from it.
RESTART_TABLES = ("server", "supervisor", "executor")
#: RESTART_TABLES as a line says them: "[server], [supervisor] and [executor]".
RESTART_TABLES_SAID = (
    ", ".join(f"[{t}]" for t in RESTART_TABLES[:-1]) + f" and [{RESTART_TABLES[-1]}]"
)

#: [server] tcp_admin's default: the admin commands that change state over the Unix socket
#: alone (the built-in config's too, config.defaults); `farm server` run by hand keeps
#: gearmand's "full" (server.settings).
TCP_ADMIN = "read-only"
#: [supervisor] ready_wait's default: seconds after which a worker that does not serve
#: yet (a command worker not connected to the job server, a Python worker still importing
#: its target) counts as started for READY=1: systemd's TimeoutStartSec= in the shipped
#: unit is 60, and one hung worker must not keep the whole farm from starting. A restart
#: replaces such a command worker rather than wait for it; a Python one is killed at
#: [supervisor] boot_timeout.
READY_WAIT = 10.0


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The local job server: where it listens and where it keeps background jobs."""

    listen: tuple[str, ...]  # farm.net's normal form: "HOST:PORT", "[v6]:PORT", "unix:/path"
    store: str  # a path, or "none" for memory only
    job_retries: int
    # False: the built-in default's choice (and its fallback). Only the warning's words: a
    # reload that writes out the store the farm runs on changes nothing to restart for.
    store_given: bool = field(default=True, compare=False)
    tcp_admin: str = TCP_ADMIN  # "full": state-changing admin commands over TCP too
    # What the other [server] keys ask of the server, as its flags (farm.config.servertune).
    flags: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[Address, ...]:
        """``listen``, parsed."""
        return tuple(parse_address(a) for a in self.listen)

    @property
    def tcp(self) -> tuple[str, int] | None:
        """The TCP (host, port) entry of ``listen``, if any (the host as listened on)."""
        addr = next((a for a in self.addresses if a.kind == "tcp"), None)
        return (addr.host, addr.port) if addr else None

    @property
    def unix(self) -> str | None:
        """The Unix socket path of ``listen``, if any."""
        return next((a.path for a in self.addresses if a.kind == "unix"), None)


@dataclass(frozen=True, kw_only=True)
class SupervisorConfig:
    control: str  # Unix socket path of the control socket
    cpus: tuple[int, ...]  # resolved: the cores slots are pinned to
    servers: tuple[str, ...]  # remote job servers; empty = run the local one
    graceful_timeout: float  # seconds a stopping worker may take to finish its job
    # Seconds a new Python worker may take to load its target (a restart's successor, or
    # any command worker's, to serve) before it is killed as a failed boot.
    boot_timeout: float = 60.0
    # Seconds after which a worker not serving yet counts as started for READY=1.
    ready_wait: float = READY_WAIT
    memory_budget_mb: int = 0  # what all pools together may use; see capacity_problem
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint; None: off
    log_format: str = "text"  # "json": supervisor, server and workers log JSON lines (farm.logs)
    # Run the [server] job server too; default: when ``servers`` is empty. With servers and
    # local_server = true, workers register with the local server and with each of servers.
    local_server: bool = True


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    """``[executor]``: where farm.Executor's large arguments and results go (executor.spill)."""

    spill_dir: str | None = None  # None: ``spill`` beside the executor's key file
    max_spill_mb: int = DEFAULT_MAX_SPILL_MB  # the largest argument or result, pickled
    spill_max_age_s: int = DEFAULT_MAX_AGE  # the sweep removes any spill file older than this
    spill_orphan_age_s: int = DEFAULT_ORPHAN_AGE  # ... and older result files, and a dead caller's


@dataclass(frozen=True, kw_only=True)
class FunctionConfig:
    name: str  # the pool's name: its table, [functions.NAME]
    target: str  # "module:function"; "" for a command pool
    workers: int  # resolved; "auto" becomes one per core of ``cpus``
    # Whether ``workers`` was "auto": a reload sizes it by the running farm's cores, which a
    # changed ``cpus`` does not move until a restart.
    auto: bool = False
    timeout: int | None  # seconds; the job fails and the worker is replaced
    max_jobs: int | None
    max_rss_mb: int | None  # recycle after a job past this
    kill_rss_mb: int | None = None  # resolved; fail the job and exit past this, mid-job
    command: CommandSpec | None = None  # a command pool: any executable instead of a target
    serves: tuple[str, ...] = ()  # the functions it registers (`function`, `functions`)
    stop_signal: int = 15  # what asks a command worker to stop (SIGTERM); SIGKILL follows
    graceful_timeout: float | None = None  # seconds before that SIGKILL; None: [supervisor]'s

    @property
    def functions(self) -> tuple[str, ...]:
        """The Gearman functions this pool's workers serve (by default the pool's name)."""
        return self.serves or (self.name,)

    @property
    def reserved(self) -> bool:
        """Whether it serves a reserved ``farm.*`` function (the Executor's ``farm.python``)."""
        return any(f.startswith(RESERVED_PREFIX) for f in self.functions)

    def options(self) -> tuple[object, ...]:
        """What a running worker was started with: a change means the pool restarts."""
        return (
            self.target,
            self.timeout,
            self.max_jobs,
            self.max_rss_mb,
            self.kill_rss_mb,
            self.command,
            self.serves,
            # A command worker keeps the signal it was started with (it is what that
            # program stops on): a new one takes new processes, as a new command does.
            self.stop_signal,
        )


@dataclass(frozen=True, kw_only=True)
class Config:
    source: str  # the file it came from, or DEFAULTS_SOURCE
    server: ServerConfig
    supervisor: SupervisorConfig
    functions: Mapping[str, FunctionConfig]
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    @property
    def local_server(self) -> bool:
        return self.supervisor.local_server

    @property
    def worker_servers(self) -> tuple[str, ...]:
        """Where workers connect: the local Unix socket or TCP port when the farm runs its
        server, then the remote ``servers``."""
        if not self.local_server:
            return self.supervisor.servers
        # The Unix socket first: it is the faster way in.
        ranked = sorted(self.server.addresses, key=lambda a: a.kind != "unix")
        local = str(connectable(ranked[0] if ranked else DEFAULT_SERVER))
        return (local, *(s for s in self.supervisor.servers if s != local))

    def servers_for(self, pool: FunctionConfig) -> tuple[str, ...]:
        """Where ``pool``'s workers connect: ``worker_servers``, except that a pool serving a
        reserved ``farm.*`` function uses only a Unix socket on this host (the local server's
        when the farm runs one): a farm server refuses ``farm.*`` over TCP, and the Executor's
        calls, code to run, must not leave the host. The config makes sure there is one."""
        if not pool.reserved:
            return self.worker_servers
        if self.local_server:
            return (f"unix:{self.server.unix}",) if self.server.unix else ()
        return tuple(s for s in self.supervisor.servers if parse_address(s).kind == "unix")

    @property
    def command_servers(self) -> tuple[str, ...]:
        """``$FARM_SERVERS`` of command workers: TCP HOST:PORTs, the local server's first
        (PHP's extension, Perl and the gearman CLI take host and port, not a Unix path)."""
        found = []
        if self.local_server and self.server.tcp:
            tcp = next(a for a in self.server.addresses if a.kind == "tcp")
            found.append(str(connectable(tcp)))
        found += [s for s in self.supervisor.servers if parse_address(s).kind == "tcp"]
        return tuple(dict.fromkeys(found))
