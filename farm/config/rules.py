"""The rules across a config's tables, checked once every table has been read: what the
pools need of the server and the supervisor, and what must not collide.

``problem`` returns the first rule broken as (key, message), which
:meth:`farm.config.parse.Validator.fail` turns into the one-line error naming the file;
``on_running_farm`` checks a reloaded file's pools against the tables the farm runs with.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import replace
from types import MappingProxyType

from farm.config.capacity import auto_workers, capacity_problem
from farm.config.defaults import PLAIN_WORKERS
from farm.config.model import RESTART_TABLES_SAID, Config
from farm.errors import ConfigError
from farm.executor.call import TARGET
from farm.loopback import TWINNED_HOSTS
from farm.net import DEFAULT_SERVER
from farm.paths import runtime_dir
from farm.protocol.codec import RESERVED_PREFIX

__all__ = ["EXECUTOR_TARGETS", "problem", "on_running_farm"]

#: The Executor's worker target (written once, in farm.executor.call, which the built-in
#: config's pool is made from too), and the shim kept for configs that copied the old one.
EXECUTOR_TARGETS = (TARGET, "farm.executor_worker:run_call")
#: Hosts that bind every address.
WILD = frozenset({"0.0.0.0", "::", ""})


def problem(config: Config) -> tuple[str, str] | None:
    """The first rule across tables that ``config`` breaks, as (key, message); or None."""
    return (
        reserved_pools(config)
        or metrics_port_free(config)
        or servers_not_local(config)
        or control_apart(config)
        or command_pools(config)
    )


def on_running_farm(new: Config, running: Config, restart: str = "farm stop; farm up") -> Config:
    """What a reload runs: ``new``'s pools with ``running``'s RESTART_TABLES ([server],
    [supervisor] and [executor]), since a change there waits for a restart. So "auto"
    pools are one per core the farm runs on, and the pools must fit its memory budget and
    its sockets (a farm.* pool its Unix socket, a command pool its TCP address):
    ConfigError, naming ``new``'s file, when they do not; ``restart`` is how this farm is
    restarted, in its words."""
    cores = auto_workers(running.supervisor.cpus)
    pools = {
        name: replace(pool, workers=cores) if pool.auto else pool
        for name, pool in new.functions.items()
    }
    config = replace(running, source=new.source, functions=MappingProxyType(pools))
    unmet = capacity_problem(
        pools, {n: p.workers for n, p in pools.items()}, running.supervisor.memory_budget_mb
    )
    broken = ("functions", f"{unmet}; lower the workers of a pool") if unmet else problem(config)
    if broken is not None:
        key, message = broken
        raise ConfigError(
            f"{new.source}: {key}: {message} (as the farm runs now: {RESTART_TABLES_SAID}"
            f" changes take a restart, {restart})"
        )
    return config


def reserved_pools(config: Config) -> tuple[str, str] | None:
    """A pool serving a reserved ``farm.*`` function (the Executor's calls, code to run)
    needs a Unix socket on this host to register on: a farm server refuses it over TCP."""
    for pool in config.functions.values():
        if pool.target in EXECUTOR_TARGETS and not all(
            f.startswith(RESERVED_PREFIX) for f in pool.functions
        ):
            # Its calls are code to run: under any other name, any local user could
            # register for them over TCP (and farm.Executor refuses such a name).
            return (
                f"functions.{pool.name}",
                f"{pool.target} serves only reserved farm.* functions; name the pool"
                f' "farm.{pool.name}" (or set function = "farm.SOMETHING")',
            )
        if not pool.reserved:
            continue
        if pool.command is not None:
            return (
                f"functions.{pool.name}",
                "command workers connect over TCP, where a farm server refuses the"
                " reserved farm.* functions; serve them from a Python target",
            )
        if pool.target and pool.target.partition(":")[0] in PLAIN_WORKERS:
            # Only here is the target certainly not the Executor's: one of farm's own plain
            # workers answers each call with bytes the Executor refuses as unsigned. Any
            # other may be a site's wrapper (logging set up, then
            # farm.executor.call.run_call(job)), which signs as the Executor's own target
            # does; farm.Executor calls nothing but farm.* names, so no other name fits it.
            served = next(f for f in pool.functions if f.startswith(RESERVED_PREFIX))
            return (
                f"functions.{pool.name}.target",
                f"{served} is a reserved farm.* function, farm.Executor's calls, which"
                f" {pool.target}, one of farm's plain workers, would answer unsigned (every"
                f' call failing); set target = "{EXECUTOR_TARGETS[0]}" (or a function of'
                " your own that returns farm.executor.call.run_call(job))",
            )
        if config.servers_for(pool):
            continue
        if config.local_server:
            # The path farm's own default would take: one this user may create (a fixed
            # /run/farm/... is root's, and the next start failed on it).
            return (
                "server.listen",
                f"the {pool.name} pool is served only over a Unix socket (its calls are"
                f' code to run); add "unix:{runtime_dir()}/gearman.sock" (the default) or'
                " another path",
            )
        return (
            "supervisor.servers",
            f"the {pool.name} pool is served only over a Unix socket (its calls are code"
            ' to run); add the "unix:/path" of a farm server on this host, or set'
            " local_server = true",
        )
    return None


def metrics_port_free(config: Config) -> tuple[str, str] | None:
    """The supervisor's metrics endpoint must not take the local server's port: the
    server then failed to bind at every start (exit 1, which systemd restarts). Compared
    by what each binds, not how it is written: "localhost" is its every address, and
    127.0.0.1 holds [::1] at its port too (farm.loopback)."""
    metrics = config.supervisor.metrics
    if metrics is None or not config.local_server:
        return None
    host, _, port = metrics.rpartition(":")
    for address in config.server.listen:
        other_host, _, other_port = address.rpartition(":")
        if address.startswith("unix:") or port == "0" or other_port != port:
            continue
        how = _one_listener(_ips(host), _ips(other_host))
        if how is None:
            continue
        return (
            "supervisor.metrics",
            f"{metrics} is the job server's listen address {address} too{how};"
            " give the metrics another port",
        )
    return None


def servers_not_local(config: Config) -> tuple[str, str] | None:
    """``[supervisor] servers`` must not name the local server: each worker registered
    with it twice, over two connections (`farm status` counted it twice). Compared as
    the metrics' port is, by what the listener binds; but a listener on every address
    is this host's alone, not another host's server at that port."""
    if not config.local_server:
        return None
    for server in config.supervisor.servers:
        for address in config.server.listen:
            if server.startswith("unix:") != address.startswith("unix:"):
                continue
            if server.startswith("unix:"):
                # realpath, as control_apart: two spellings of one socket are one server
                same = os.path.realpath(server[5:]) == os.path.realpath(address[5:])
                how: str | None = "" if same else None
            else:
                host, _, port = server.rpartition(":")
                other_host, _, other_port = address.rpartition(":")
                if port != other_port:
                    continue
                mine, theirs = _ips(host), _ips(other_host)
                if WILD & theirs and not (WILD & mine or _of_this_host(mine)):
                    continue  # another host's server at the port this one listens on
                how = _one_listener(mine, theirs)
            if how is None:
                continue
            return (
                "supervisor.servers",
                f"{server} is the local server's listen address {address}{how}; remove it:"
                " the workers reach the local server already",
            )
    return None


def control_apart(config: Config) -> tuple[str, str] | None:
    """The control socket must not be the local server's Unix socket: the server then
    failed to bind at every start (exit 1, which systemd restarts)."""
    control, unix = config.supervisor.control, config.server.unix
    # realpath, not normpath: a directory link on the way (/var/run -> /run on many hosts)
    # makes two paths as written one socket.
    if config.local_server and unix and os.path.realpath(unix) == os.path.realpath(control):
        return (
            "supervisor.control",
            f"{control} is the job server's Unix socket in server.listen too;"
            " give the control socket another path",
        )
    return None


def command_pools(config: Config) -> tuple[str, str] | None:
    """Command workers connect over TCP; one with a timeout is watched through the local
    server's Unix socket."""
    pools = config.functions.values()
    command = next((p.name for p in pools if p.command), None)
    if command is not None and not config.command_servers:
        return (
            f"functions.{command}.command",
            f'command workers connect over TCP; add "{DEFAULT_SERVER}" to server.listen'
            " (or a HOST:PORT to supervisor.servers)",
        )
    timed = next((p.name for p in pools if p.command and p.timeout), None)
    if timed is not None and not (config.local_server and config.server.unix):
        return (
            f"functions.{timed}.timeout",
            "the supervisor sees a command worker's job through the local server's Unix"
            ' socket; add "unix:PATH" to server.listen, or remove it and register the'
            " function with a timeout in the worker (CAN_DO_TIMEOUT)",
        )
    return None


def _one_listener(mine: frozenset[str], theirs: frozenset[str]) -> str | None:
    """Whether the hosts ``mine`` and ``theirs``, at one port, are one listener's: "" where
    they share an address or either is every address, a note where the one is the
    other's [::1] twin, None where they are apart."""
    if mine & theirs or WILD & (mine | theirs):
        return ""  # one address, or every address: nothing more to say
    if _twinned(mine) and "::1" in theirs or _twinned(theirs) and "::1" in mine:
        return " (a listener on 127.0.0.1 holds [::1] at its port as well)"
    return None


def _of_this_host(ips: frozenset[str], assigned: frozenset[str] | None = None) -> bool:
    """Whether one of ``ips`` is this host's own: a loopback address, or one assigned to
    one of its interfaces (``assigned``; by default as they are now, ``_assigned``). Not
    "one it can bind": with net.ipv4.ip_nonlocal_bind=1 (keepalived's and haproxy's
    floating addresses) every address binds, another host's server's too."""
    own = _assigned() if assigned is None else assigned
    for ip in ips:
        try:
            parsed = _plain(ip)
        except ValueError:
            continue  # the host name itself, beside its addresses
        if parsed.is_loopback or str(parsed) in own:
            return True
    return False


def _assigned() -> frozenset[str]:
    """The IP addresses on this host's interfaces now, as ``_plain`` writes them; none
    where they cannot be listed. The list is asked of the kernel over netlink, which a
    sandbox may forbid (a unit's RestrictAddressFamilies= without AF_NETLINK): `farm up`
    died of it, exit 1, and systemd restarted it for ever. Without the list only loopback
    reads as this host's, and a server entry naming one of its other addresses is taken
    as another host's: kept, as a duplicate connection, not a refusal."""
    import psutil  # only where a listener on every address meets a TCP server entry

    try:
        nics = psutil.net_if_addrs()
    except OSError:
        return frozenset()
    return frozenset(
        str(_plain(nic.address))
        for each in nics.values()
        for nic in each
        if nic.family in (socket.AF_INET, socket.AF_INET6)
    )


def _plain(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ip`` parsed without its zone (fe80::1%eth0), an IPv4-mapped one as IPv4, so that
    one address written two ways compares equal; ValueError when it is no address."""
    parsed = ipaddress.ip_address(ip.partition("%")[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def _twinned(ips: frozenset[str]) -> bool:
    """Whether a listener on ``ips`` holds its port on [::1] too (farm.loopback's twin)."""
    return bool(ips & TWINNED_HOSTS)


def _ips(host: str) -> frozenset[str]:
    """The addresses ``host`` names ("localhost" is 127.0.0.1 too), or itself, each as
    ``_plain`` writes it: every check then compares one form ([::ffff:127.0.0.1] is
    127.0.0.1, as the listener that holds it is)."""
    host = host.strip("[]")
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(host or None, None)}
    except OSError:
        found = set()
    return frozenset(_written(ip) for ip in found | {host})


def _written(ip: str) -> str:
    """``ip`` as ``_plain`` writes it, or itself where it is no address (a host name, or
    "" for every address)."""
    try:
        return str(_plain(ip))
    except ValueError:
        return ip
