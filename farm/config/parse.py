"""Reading a farm.toml document (the dict a TOML reader gives) into :mod:`farm.config.model`.

Each method owns one table or value and raises :meth:`Validator.fail`: one
:class:`~farm.errors.ConfigError` whose message names the file, the key and the fix. The
``[functions.NAME]`` tables are :mod:`farm.config.pooltables`'.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from farm.config import capacity, rules
from farm.config.defaults import builtin, server_store
from farm.config.model import (
    READY_WAIT,
    Config,
    ExecutorConfig,
    ServerConfig,
    SupervisorConfig,
)
from farm.config.pooltables import MAX_GRACE, POOL_KEYS, PoolReader
from farm.config.servertune import (
    TUNING,
    server_flags,
    socket_problem,
    spill_dir_problem,
    store_problem,
)
from farm.discovery import no_host, no_settings
from farm.errors import ConfigError
from farm.logs import LOG_FORMATS
from farm.net import DEFAULT_PORT, DEFAULT_SERVER, Address, AddressError, parse_address
from farm.server.settings import NO_STORE, store_spec_problem

__all__ = ["Validator"]

#: A path the local server's Unix socket may have, for a fix.
_SOCKET = "/run/farm/gearman.sock"
#: The fix for a bad metrics address (not the job server's forms: no unix:, not its port).
_METRICS_FORMS = 'must be "HOST:PORT" (e.g. "127.0.0.1:9730") or "off"'


class Validator(PoolReader):
    """Checks one parsed document; each method owns one table (the pools': PoolReader)."""

    #: Where a ``[functions.NAME]`` table that does not read goes, to say every such pool
    #: at once (`farm check`); None: the first one raises, as `farm up` stops on it.
    pool_errors: list[ConfigError] | None = None

    def config(self, raw: dict[str, Any]) -> Config:
        if not raw:  # a file truncated by a failed write or an editor
            raise no_settings(self.source)
        defaults = builtin()
        sup = {
            **defaults["supervisor"],
            "graceful_timeout": 30,
            "boot_timeout": 60,
            "ready_wait": READY_WAIT,
        }
        server_keys = (*defaults["server"], *TUNING)
        executor_keys = tuple(f.name for f in fields(ExecutorConfig))
        for table, keys in (
            ("[server]", server_keys),
            ("[supervisor]", sup),
            ("[executor]", executor_keys),
            # function and functions: more likely a typo of the [functions] table's name
            ("a [functions.NAME] table", set(POOL_KEYS) - {"function", "functions"}),
        ):
            for name in keys:
                self.homes.setdefault(name, []).append(table)
        self.table(raw, "", ("server", "supervisor", "functions", "executor"))
        server = self.server(
            {**defaults["server"], **self.table(raw.get("server", {}), "server", server_keys)}
        )
        supervisor = self.supervisor(
            {**sup, **self.table(raw.get("supervisor", {}), "supervisor", tuple(sup))}
        )
        # A file that only moves the farm (addresses, sockets, store) runs the built-in
        # pools, as no file does; one that names any pool runs the pools it names.
        raw_functions = raw.get("functions", defaults["functions"])
        names = tuple(raw_functions) if isinstance(raw_functions, dict) else ()
        functions = self.table(raw_functions, "functions", names)
        pools = {}
        for name, spec in functions.items():
            try:
                pools[name] = self.function(name, spec, capacity.auto_workers(supervisor.cpus))
            except ConfigError as e:
                if self.pool_errors is None:
                    raise
                # Left out: the rules across tables are read on the pools that did read,
                # which can only hide a problem (one pool fewer), never make one up.
                self.pool_errors.append(e)
        problem = capacity.capacity_problem(
            pools, {n: p.workers for n, p in pools.items()}, supervisor.memory_budget_mb
        )
        if problem:
            raise self.fail("functions", f"{problem}; lower the workers of a pool")
        config = Config(
            source=self.source,
            server=server,
            supervisor=supervisor,
            functions=MappingProxyType(pools),
            executor=self.executor(raw.get("executor", {}), executor_keys),
        )
        broken = rules.problem(config)  # the rules across the tables
        if broken is not None:
            raise self.fail(*broken)
        return config

    def executor(self, raw: Any, keys: tuple[str, ...]) -> ExecutorConfig:
        """``[executor]``: farm.Executor's spill directory and limits (all optional)."""
        table = self.table(raw, "executor", keys)
        spill_dir = table.get("spill_dir")
        if spill_dir is not None:
            if not isinstance(spill_dir, str):
                raise self.fail("executor.spill_dir", "must be the path of a directory")
            spill_dir = self.path(spill_dir, "executor.spill_dir")
            problem = spill_dir_problem(spill_dir)
            if problem:
                raise self.fail("executor.spill_dir", problem)
        numbers = {}
        for key in ("max_spill_mb", "spill_max_age_s", "spill_orphan_age_s"):
            if key in table:
                value = table[key]
                if type(value) is not int or value <= 0:
                    raise self.fail(f"executor.{key}", f"must be a whole number > 0, got {value!r}")
                numbers[key] = value
        return ExecutorConfig(spill_dir=spill_dir, **numbers)

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
        for a in addresses:
            if a.kind == "unix" and (where := socket_problem(a.path, f"unix:{_SOCKET}")):
                raise self.fail("server.listen", where)
        kinds = [a.kind for a in addresses]
        if kinds.count("tcp") > 1 or kinds.count("unix") > 1:
            raise self.fail(
                "server.listen",
                "at most one TCP address and one unix: path; remove the extra entries",
            )
        store = raw["store"]
        store_given = store is not None
        if store is None:
            store = server_store(tuple(addresses))
        elif not isinstance(store, str):
            raise self.fail("server.store", f'must be a file path or "{NO_STORE}"')
        elif problem := store_spec_problem(store):  # the rule of `farm server --store`
            raise self.fail("server.store", problem)
        elif store != NO_STORE:
            store = self.path(store, "server.store")
            problem = store_problem(store)
            if problem:
                raise self.fail("server.store", problem)
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
            store_given=store_given,
            job_retries=self.count(raw["job_retries"], "server.job_retries"),
            tcp_admin=tcp_admin,
            flags=server_flags(raw, self.fail),
        )

    def supervisor(self, raw: dict[str, Any]) -> SupervisorConfig:
        control = raw["control"]
        if not isinstance(control, str) or not control:
            raise self.fail(
                "supervisor.control",
                "must be the path of a Unix socket, e.g. /run/farm/control.sock",
            )
        if "/" not in control and re.fullmatch(r".*:\d+", control):  # not a file named so
            raise self.fail(
                "supervisor.control",
                f"{control!r} is a TCP address; the control socket is a Unix socket: give"
                " its path, e.g. /run/farm/control.sock",
            )
        control = self.path(control, "supervisor.control")
        problem = socket_problem(control, "/run/farm/control.sock")
        if problem:
            raise self.fail("supervisor.control", problem)
        servers = raw["servers"]
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise self.fail(
                "supervisor.servers",
                f'must be a list like ["10.0.0.5:{DEFAULT_PORT}"]; [] runs the local server',
            )
        servers = [str(self.server_address(a)) for a in servers]
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
        boot = raw["boot_timeout"]
        if isinstance(boot, bool) or not isinstance(boot, int | float) or not 0 < boot <= MAX_GRACE:
            raise self.fail(
                "supervisor.boot_timeout",
                f"must be a number of seconds > 0 and at most {MAX_GRACE}, got {boot!r}",
            )
        ready = raw["ready_wait"]
        if (
            isinstance(ready, bool)
            or not isinstance(ready, int | float)
            or not 0 < ready <= MAX_GRACE
        ):
            raise self.fail(
                "supervisor.ready_wait",
                f"must be a number of seconds > 0 and at most {MAX_GRACE}, got {ready!r}",
            )
        budget = raw["memory_budget_mb"]
        if budget == "auto":
            budget = capacity.default_memory_budget_mb()
        elif type(budget) is not int or budget <= 0:
            raise self.fail(
                "supervisor.memory_budget_mb",
                f'must be a whole number of MB > 0 or "auto" (all memory), got {budget!r}',
            )
        metrics = raw["metrics"]
        if metrics != "off":
            where = None
            # Port 0: any free port, which `farm ps --json` reports (tests, several farms).
            any_port = isinstance(metrics, str) and metrics.endswith(":0")
            if isinstance(metrics, str):
                checked = metrics[:-2] + ":1" if any_port else metrics
                try:
                    where = parse_address(checked, default_port=None)
                except AddressError as exc:  # quoting what the file says, not `checked`
                    raise self.fail(
                        "supervisor.metrics", f"{metrics!r}: {exc.reason}; {_METRICS_FORMS}"
                    ) from None
            if where is None or where.kind != "tcp":
                raise self.fail("supervisor.metrics", _METRICS_FORMS)
            metrics = str(where).rpartition(":")[0] + ":0" if any_port else str(where)
        log_format = raw["log_format"]
        if log_format not in LOG_FORMATS:
            raise self.fail(
                "supervisor.log_format", f'must be "text" or "json", got {log_format!r}'
            )
        return SupervisorConfig(
            metrics=None if metrics == "off" else metrics,
            log_format=log_format,
            control=control,
            cpus=self.cpus(raw["cpus"]),
            servers=tuple(servers),
            local_server=self.local_server(raw["local_server"], servers),
            graceful_timeout=float(grace),
            boot_timeout=float(boot),
            ready_wait=float(ready),
            memory_budget_mb=budget,
        )

    def server_address(self, text: str) -> Address:
        """One of ``[supervisor] servers``: an address the workers connect to, so with a
        host (":4730" is every interface to a listener; the workers' connects failed)."""
        parsed = self.address(text, "supervisor.servers")
        if parsed.kind == "tcp" and not parsed.host:
            raise self.fail("supervisor.servers", no_host(text))
        return parsed

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
        allowed = capacity.available_cpus()
        if raw == "all":
            return allowed
        if isinstance(raw, str):  # "2-15", "0-3,8-11": taskset's and cpusets' syntax
            try:
                raw = capacity.cpu_list(raw)
            except ValueError as e:
                raise self.fail("supervisor.cpus", str(e)) from None
        if not isinstance(raw, list) or not raw or not all(type(c) is int for c in raw):
            raise self.fail("supervisor.cpus", capacity.CPUS_FORMS)
        twice = sorted(c for c, n in Counter(raw).items() if n > 1)  # linear: a long list too
        if twice:  # likely a typo for another core; read as one fewer, it went unnoticed
            raise self.fail("supervisor.cpus", f"core {twice[0]} is listed twice; list each once")
        outside = sorted(set(raw) - set(allowed))
        if outside:
            raise self.fail(
                "supervisor.cpus",
                f"core {outside[0]} is outside this process's CPU set {list(allowed)}; use those",
            )
        return tuple(sorted(set(raw)))
