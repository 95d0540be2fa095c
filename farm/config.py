"""farm.toml -> validated, frozen dataclasses.

Every mistake becomes one :class:`~farm.errors.ConfigError` whose message names
the file, the key and the fix, so ``farm up`` can print one line and exit 2
before any process starts.

Search order (:func:`find_config`): ``--config``, ``$FARM_CONFIG``,
``./farm.toml``, ``/etc/farm/farm.toml``, then built-in defaults that serve the
functions in ``workers/``. The defaults never need root: runtime files go to
``$XDG_RUNTIME_DIR/farm`` (else ``/tmp/farm-$UID``) and durable jobs to
``$XDG_STATE_HOME/farm`` (else ``~/.local/state/farm``), or stay in memory when
that is not writable.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from farm.commandspec import CommandSpec, parse_command, parse_stop_signal
from farm.discovery import (
    SYSTEM_CONFIG,
    control_path,
    default_listen,
    find_config,
    read_config_file,
    resolve,
)
from farm.errors import ConfigError
from farm.executor.call import DEFAULT_FUNCTION as EXECUTOR_FUNCTION
from farm.executor.call import TARGET as EXECUTOR_TARGET
from farm.logs import LOG_FORMATS
from farm.net import DEFAULT_PORT, DEFAULT_SERVER, Address, AddressError, connectable, parse_address
from farm.paths import default_store, runtime_dir
from farm.targets import target_problem

__all__ = [
    "Config",
    "ServerConfig",
    "SupervisorConfig",
    "FunctionConfig",
    "SYSTEM_CONFIG",
    "find_config",
    "load",
    "load_config",
    "control_path",
    "available_cpus",
]

DEFAULTS_SOURCE = "<built-in defaults>"
#: Most workers one pool may have (a typo must not fork-bomb the host).
MAX_WORKERS = 1024
#: What a worker is taken to need when its pool sets no max_rss_mb.
DEFAULT_WORKER_MB = 100
#: kill_rss_mb when a pool sets only max_rss_mb: this many times it, rounded up.
KILL_RSS_FACTOR = 1.5
#: Longest graceful_timeout accepted (a day): a stop must end.
MAX_GRACE = 86400
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: The keys of a [functions.NAME] table; COMMAND_KEYS are for command pools only.
COMMAND_KEYS = ("command", "cwd", "env", "user", "stop_signal", "graceful_timeout")
POOL_KEYS = (
    "target",
    "workers",
    "timeout",
    "max_jobs",
    "max_rss_mb",
    "kill_rss_mb",
    "function",
    "functions",
) + COMMAND_KEYS
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The local job server: where it listens and where it keeps background jobs."""

    listen: tuple[str, ...]  # farm.net's normal form: "HOST:PORT", "[v6]:PORT", "unix:/path"
    store: str  # a path, or "none" for memory only
    job_retries: int
    tcp_admin: str = "read-only"  # "full": state-changing admin commands over TCP too

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
    memory_budget_mb: int = 0  # what all pools together may use; see capacity_problem
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint; None: off
    log_format: str = "text"  # "json": supervisor, server and workers log JSON lines (farm.logs)
    # Run the [server] job server too; default: when ``servers`` is empty. With servers and
    # local_server = true, workers register with the local server and with each of servers.
    local_server: bool = True


@dataclass(frozen=True, kw_only=True)
class FunctionConfig:
    name: str  # the pool's name: its table, [functions.NAME]
    target: str  # "module:function"; "" for a command pool
    workers: int  # resolved; "auto" becomes one per core of ``cpus``
    auto: bool
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
        )


@dataclass(frozen=True, kw_only=True)
class Config:
    source: str  # the file it came from, or DEFAULTS_SOURCE
    server: ServerConfig
    supervisor: SupervisorConfig
    functions: Mapping[str, FunctionConfig]

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


def _default_store(addresses: tuple[Address, ...]) -> str:
    """The server's own file (keyed by its TCP port, else its Unix path), or "none" when
    farm's state directory cannot be made."""
    tcp = next((a.port for a in addresses if a.kind == "tcp"), None)
    unix = next((a.path for a in addresses if a.kind == "unix"), None)
    path = default_store(tcp, unix)
    existing = path.parent
    while not existing.exists():  # the nearest ancestor decides whether we may create it
        existing = existing.parent
    return str(path) if os.access(existing, os.W_OK) else "none"


def available_cpus() -> tuple[int, ...]:
    """The cores this process may run on (its affinity set, not the machine's count)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def _defaults() -> dict[str, Any]:
    run = runtime_dir()
    return {
        "server": {
            "listen": default_listen(),
            "store": None,  # the server's own file in the state directory: _default_store
            "job_retries": 3,
            "tcp_admin": "read-only",
        },
        "supervisor": {
            "control": f"{run}/control.sock",
            "cpus": "all",
            "servers": [],
            "local_server": None,  # default: when servers is empty
            "memory_budget_mb": "auto",
            "metrics": "127.0.0.1:9730",
            "log_format": "text",
        },
        "functions": {
            "reverse": {"target": "workers.text:reverse", "workers": 1},
            "resize": {"target": "workers.image:resize", "workers": "auto", "timeout": 60},
            "thumbnail": {"target": "workers.image:thumbnail", "workers": 1, "timeout": 60},
            "pbkdf2": {"target": "workers.hashing:pbkdf2", "workers": 1, "timeout": 60},
            # farm.Executor's pool.
            EXECUTOR_FUNCTION: {"target": EXECUTOR_TARGET, "workers": "auto"},
        },
    }


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find and load the config by the search order."""
    return load(find_config(explicit))


def default_memory_budget_mb() -> int:
    """The machine's memory, in MB: the default bound of what all pools may hold."""
    import psutil

    return int(psutil.virtual_memory().total // 2**20)


def capacity_problem(
    pools: Mapping[str, FunctionConfig], targets: Mapping[str, int], budget_mb: int
) -> str | None:
    """Why these pool sizes cannot be run, or None. One rule for the config and `farm scale`:
    at most MAX_WORKERS a pool, and all workers' memory (``max_rss_mb``, else an estimate
    of DEFAULT_WORKER_MB each) within the budget -- a typo must not fork-bomb the host."""
    for name, count in targets.items():
        if not 0 <= count <= MAX_WORKERS:
            return f"{name} would have {count} workers (0..{MAX_WORKERS})"
    need = sum(
        count * (pools[name].max_rss_mb or DEFAULT_WORKER_MB)
        for name, count in targets.items()
        if name in pools
    )
    if need > budget_mb:
        return (
            f"the pools would need about {need} MB ({DEFAULT_WORKER_MB} MB a worker unless"
            f" max_rss_mb says), more than [supervisor] memory_budget_mb = {budget_mb}"
        )
    return None


def load(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate one file (None: the built-in defaults)."""
    if path is None:
        return _Validator(DEFAULTS_SOURCE, Path.cwd()).config(_defaults())
    path = Path(path)
    return _Validator(str(path), path.resolve().parent).config(read_config_file(path))


class _Validator:
    """Checks one parsed document; each method owns one table."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base  # relative paths in a file are relative to the file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def table(self, raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table ([{key}]), got {_kind(raw)}")
        for name in raw:
            if name not in allowed:
                near = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"allowed: {', '.join(allowed)}"
                where = f"{key}.{name}" if key else name
                raise self.fail(where, f"unknown key; {hint}")
        return raw

    def config(self, raw: dict[str, Any]) -> Config:
        self.table(raw, "", ("server", "supervisor", "functions"))
        defaults = _defaults()
        server = self.server(
            {
                **defaults["server"],
                **self.table(raw.get("server", {}), "server", tuple(defaults["server"])),
            }
        )
        sup = {**defaults["supervisor"], "graceful_timeout": 30}
        supervisor = self.supervisor(
            {**sup, **self.table(raw.get("supervisor", {}), "supervisor", tuple(sup))}
        )
        if "functions" not in raw:
            raise self.fail(
                "functions",
                'no functions; add a [functions.NAME] table with target = "module:function"',
            )
        functions = self.table(raw["functions"], "functions", tuple(raw["functions"]))
        pools = {
            name: self.function(name, spec, len(supervisor.cpus))
            for name, spec in functions.items()
        }
        problem = capacity_problem(
            pools, {n: p.workers for n, p in pools.items()}, supervisor.memory_budget_mb
        )
        if problem:
            raise self.fail("functions", f"{problem}; lower the workers of a pool")
        local = supervisor.local_server
        if local and not server.unix and any(n.startswith("farm.") for n in pools):
            name = next(n for n in pools if n.startswith("farm."))
            raise self.fail(
                "server.listen",
                f"the {name} pool is served only over a Unix socket (its calls are code to"
                ' run); add "unix:/run/farm/gearman.sock" or another path',
            )
        config = Config(
            source=self.source,
            server=server,
            supervisor=supervisor,
            functions=MappingProxyType(pools),
        )
        command = next((p.name for p in pools.values() if p.command), None)
        if command is not None and not config.command_servers:
            raise self.fail(
                f"functions.{command}.command",
                f'command workers connect over TCP; add "{DEFAULT_SERVER}" to server.listen'
                " (or a HOST:PORT to supervisor.servers)",
            )
        return config

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        listen = raw["listen"]
        if isinstance(listen, str):
            listen = [listen]
        if (
            not isinstance(listen, list)
            or not listen
            or not all(isinstance(a, str) for a in listen)
        ):
            raise self.fail(
                "server.listen",
                f'must be a list like ["{DEFAULT_SERVER}", "unix:/run/farm/gearman.sock"]',
            )
        addresses = [self.address(a, "server.listen") for a in listen]
        kinds = [a.kind for a in addresses]
        if kinds.count("tcp") > 1 or kinds.count("unix") > 1:
            raise self.fail(
                "server.listen",
                "at most one TCP address and one unix: path; remove the extra entries",
            )
        store = raw["store"]
        if store is None:
            store = _default_store(tuple(addresses))
        elif not isinstance(store, str) or not store:
            raise self.fail("server.store", 'must be a file path or "none"')
        elif store != "none":
            store = self.path(store, "server.store")
        tcp_admin = raw["tcp_admin"]
        if tcp_admin not in ("read-only", "full"):
            raise self.fail(
                "server.tcp_admin",
                'must be "read-only" (state-changing admin commands on the Unix socket only)'
                ' or "full" (as gearmand)',
            )
        return ServerConfig(
            listen=tuple(str(a) for a in addresses),
            store=store,
            job_retries=self.count(raw["job_retries"], "server.job_retries"),
            tcp_admin=tcp_admin,
        )

    def supervisor(self, raw: dict[str, Any]) -> SupervisorConfig:
        control = raw["control"]
        if not isinstance(control, str) or not control:
            raise self.fail(
                "supervisor.control",
                "must be the path of a Unix socket, e.g. /run/farm/control.sock",
            )
        servers = raw["servers"]
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise self.fail(
                "supervisor.servers",
                f'must be a list like ["10.0.0.5:{DEFAULT_PORT}"]; [] runs the local server',
            )
        servers = [str(self.address(a, "supervisor.servers")) for a in servers]
        grace = raw["graceful_timeout"]
        if (
            isinstance(grace, bool)
            or not isinstance(grace, int | float)
            or not 0 <= grace <= MAX_GRACE  # also refuses nan and inf
        ):
            raise self.fail(
                "supervisor.graceful_timeout",
                f"must be a number of seconds from 0 to {MAX_GRACE}, got {grace!r}",
            )
        budget = raw["memory_budget_mb"]
        if budget == "auto":
            budget = default_memory_budget_mb()
        elif type(budget) is not int or budget <= 0:
            raise self.fail(
                "supervisor.memory_budget_mb",
                f'must be a whole number of MB > 0 or "auto" (all memory), got {budget!r}',
            )
        metrics = raw["metrics"]
        if metrics != "off":
            where = None
            if isinstance(metrics, str):
                where = self.address(metrics, "supervisor.metrics")
            if where is None or where.kind != "tcp":
                raise self.fail(
                    "supervisor.metrics", 'must be "HOST:PORT" (e.g. "127.0.0.1:9730") or "off"'
                )
            metrics = str(where)
        log_format = raw["log_format"]
        if log_format not in LOG_FORMATS:
            raise self.fail(
                "supervisor.log_format", f'must be "text" or "json", got {log_format!r}'
            )
        return SupervisorConfig(
            metrics=None if metrics == "off" else metrics,
            log_format=log_format,
            control=self.path(control, "supervisor.control"),
            cpus=self.cpus(raw["cpus"]),
            servers=tuple(servers),
            local_server=self.local_server(raw["local_server"], servers),
            graceful_timeout=float(grace),
            memory_budget_mb=budget,
        )

    def local_server(self, raw: Any, servers: list[str]) -> bool:
        if raw is None:
            return not servers
        if not isinstance(raw, bool):
            raise self.fail("supervisor.local_server", f"must be true or false, got {raw!r}")
        if not raw and not servers:
            raise self.fail(
                "supervisor.local_server",
                "false needs servers to register the workers with; add"
                f' servers = ["HOST:{DEFAULT_PORT}"] or set local_server = true',
            )
        return raw

    def cpus(self, raw: Any) -> tuple[int, ...]:
        allowed = available_cpus()
        if raw == "all":
            return allowed
        if not isinstance(raw, list) or not raw or not all(type(c) is int for c in raw):
            raise self.fail(
                "supervisor.cpus", f'must be "all" or a list of core numbers like {list(allowed)}'
            )
        outside = sorted(set(raw) - set(allowed))
        if outside:
            raise self.fail(
                "supervisor.cpus",
                f"core {outside[0]} is outside this process's CPU set {list(allowed)}; use those",
            )
        return tuple(sorted(set(raw)))

    def function(self, name: str, raw: Any, ncpus: int) -> FunctionConfig:
        key = f"functions.{name}"
        if not _NAME.match(name):
            raise self.fail(
                key, "function names use letters, digits, '_', '.' and '-' (at most 64)"
            )
        raw = self.table(raw, key, POOL_KEYS)
        if "command" in raw:
            return self.command_pool(name, raw, ncpus)
        if "target" not in raw:
            raise self.fail(
                f"{key}.target",
                'missing; add target = "module:function" (or command = ["php", "worker.php"])',
            )
        for other in COMMAND_KEYS:
            if other in raw:
                raise self.fail(f"{key}.{other}", "applies to command pools only; remove it")
        target = raw["target"]
        if not isinstance(target, str) or not _TARGET.match(target):
            raise self.fail(f"{key}.target", f'must look like "module:function", got {target!r}')
        problem = target_problem(target)
        if problem:
            raise self.fail(f"{key}.target", problem)
        workers = raw.get("workers", "auto")
        auto = workers == "auto"
        if not auto and (type(workers) is not int or workers < 0):
            raise self.fail(
                f"{key}.workers", f'must be a whole number >= 0 or "auto", got {workers!r}'
            )
        max_rss_mb = self.optional_positive(raw.get("max_rss_mb"), f"{key}.max_rss_mb")
        kill_rss_mb = self.optional_positive(raw.get("kill_rss_mb"), f"{key}.kill_rss_mb")
        if kill_rss_mb is None and max_rss_mb is not None:
            kill_rss_mb = math.ceil(max_rss_mb * KILL_RSS_FACTOR)
        elif kill_rss_mb is not None and max_rss_mb is not None and kill_rss_mb < max_rss_mb:
            raise self.fail(
                f"{key}.kill_rss_mb",
                f"must be >= max_rss_mb ({max_rss_mb}), got {kill_rss_mb}; raise it, or"
                f" leave it out for {KILL_RSS_FACTOR:g} x max_rss_mb",
            )
        return FunctionConfig(
            name=name,
            target=target,
            workers=ncpus if auto else workers,
            auto=auto,
            timeout=self.optional_positive(raw.get("timeout"), f"{key}.timeout"),
            max_jobs=self.optional_positive(raw.get("max_jobs"), f"{key}.max_jobs"),
            max_rss_mb=max_rss_mb,
            kill_rss_mb=kill_rss_mb,
            serves=self.served(raw, key),
        )

    def command_pool(self, name: str, raw: dict[str, Any], ncpus: int) -> FunctionConfig:
        """A pool of any executable: ``command`` (+ ``cwd``, ``env``, ``user``) instead of
        ``target``; the Python worker's own limits do not apply to it."""
        key = f"functions.{name}"
        for other in ("target", "max_jobs", "max_rss_mb", "kill_rss_mb", "timeout"):
            if other in raw:
                why = {
                    "target": "give either target or command",
                    "timeout": "the supervisor cannot see a command worker's jobs; register"
                    " the function with a timeout in the worker (CAN_DO_TIMEOUT) instead",
                }.get(other, "applies to Python workers only")
                raise self.fail(f"{key}.{other}", f"{why}; remove it")
        workers = raw.get("workers", "auto")
        auto = workers == "auto"
        if not auto and (type(workers) is not int or workers < 0):
            raise self.fail(
                f"{key}.workers", f'must be a whole number >= 0 or "auto", got {workers!r}'
            )
        grace = raw.get("graceful_timeout")
        if grace is not None and (
            isinstance(grace, bool)
            or not isinstance(grace, int | float)
            or not 0 <= grace <= MAX_GRACE
        ):
            raise self.fail(
                f"{key}.graceful_timeout",
                f"must be a number of seconds from 0 to {MAX_GRACE}, got {grace!r}",
            )
        return FunctionConfig(
            name=name,
            target="",
            workers=ncpus if auto else workers,
            auto=auto,
            timeout=None,
            max_jobs=None,
            max_rss_mb=None,
            command=parse_command(raw, key, str(self.base), self.fail),
            serves=self.served(raw, key),
            stop_signal=parse_stop_signal(raw.get("stop_signal"), f"{key}.stop_signal", self.fail),
            graceful_timeout=None if grace is None else float(grace),
        )

    def served(self, raw: dict[str, Any], key: str) -> tuple[str, ...]:
        """``function = "NAME"`` or ``functions = ["A", "B"]``: what the pool registers."""
        if "function" in raw and "functions" in raw:
            raise self.fail(f"{key}.functions", "give function or functions, not both")
        names = raw.get("functions", [raw["function"]] if "function" in raw else [])
        which = f"{key}.functions" if "functions" in raw else f"{key}.function"
        if not isinstance(names, list) or not all(
            isinstance(n, str) and _NAME.match(n) for n in names
        ):
            raise self.fail(
                which, 'must name functions like "reverse" (letters, digits, _ . -; at most 64)'
            )
        if "functions" in raw and not names:
            raise self.fail(which, "is empty; name at least one function")
        return tuple(dict.fromkeys(names))

    def count(self, value: Any, key: str) -> int:
        if type(value) is not int or value < 0:
            raise self.fail(key, f"must be a whole number >= 0, got {value!r}")
        return value

    def optional_positive(self, value: Any, key: str) -> int | None:
        if value is None:
            return None
        if type(value) is not int or value <= 0:
            raise self.fail(
                key, f"must be a whole number > 0 (or left out for no limit), got {value!r}"
            )
        return value

    def address(self, addr: str, key: str) -> Address:
        """``addr`` parsed, its port required (a file says which); Unix paths resolved."""
        try:
            parsed = parse_address(addr, default_port=None)
        except AddressError as exc:
            raise self.fail(
                key,
                f"{addr!r}: {exc.reason}; "
                f'write HOST:PORT (e.g. "{DEFAULT_SERVER}"), "[::1]:PORT" or "unix:/path"',
            ) from None
        if parsed.kind == "unix":
            return Address("unix", path=self.path(parsed.path, key))
        return parsed

    def path(self, value: str, key: str) -> str:
        if not value.strip():
            raise self.fail(key, "must not be empty")
        return resolve(self.base, value)


def _kind(value: Any) -> str:
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        list: "a list",
    }.get(type(value), type(value).__name__)
