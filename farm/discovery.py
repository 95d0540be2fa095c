"""Where the farm is, for a client, worker or executor given no servers.

One address-only reading of the config, the same file the CLI reads: it never
imports a worker target (a caller need not have the workers' modules), and it
reads nothing but ``[server] listen``, ``[supervisor] servers`` and, for the Executor's
large data, ``[executor] spill_dir`` and ``max_spill_mb``.

Search order: ``$FARM_SERVERS`` (comma-separated), then ``$GEARMAN_SERVERS``
(libgearman's convention; the Executor takes only its ``unix:`` entries), each unless
empty or blank, then the config
(``$FARM_CONFIG``, ``./farm.toml``, ``/etc/farm/farm.toml``), else the built-in
defaults. From a config, the local server's Unix socket comes first: it is
faster, and it is the only way in for the Executor, whose calls only workers
on the Unix socket may take. A client
falls back to TCP when the socket is not there or not accessible to its user (a warning
where it is not there and another user's farm holds the port);
the Executor does not (it would put signed calls on a TCP port any local user
can reach). A config whose workers serve remote servers (``[supervisor] servers``,
no local one) names those: a client takes them all, the Executor their ``unix:`` entries
that answer; each ``unix:`` entry (and, for the Executor, each of ``$FARM_SERVERS`` and
``$GEARMAN_SERVERS``) is checked for a planted socket as the local one is.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from farm.configfile import no_settings, read_config_file  # every reader's, re-exported
from farm.errors import ConfigError, ServerUnavailable
from farm.loopback import another_users_listener
from farm.net import (
    DEFAULT_SERVER,
    Address,
    AddressError,
    connectable,
    parse_address,
    parse_servers,
)
from farm.paths import (
    controlled_by_another,
    runtime_dir,
    socket_path_problem,
    untrusted_because,
    working_directory,
)
from farm.sockettrust import answering, trusted, usable

__all__ = [
    "SYSTEM_CONFIG",
    "find_config",
    "read_config_file",
    "no_settings",
    "config_file",
    "config_folder",
    "control_path",
    "default_control",
    "default_listen",
    "FarmAddresses",
    "local_farm",
    "no_host",
    "client_servers",
    "executor_servers",
    "servers_from_env",
    "executor_spill",
]

SYSTEM_CONFIG = Path("/etc/farm/farm.toml")
log = logging.getLogger("farm")


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read, by the search order; None means built-in defaults."""
    if explicit is not None:
        return _named(Path(explicit), "(--config); check the path")
    env = os.environ.get("FARM_CONFIG")
    if env:
        return _named(Path(env), "($FARM_CONFIG); fix or unset it")
    for candidate in (Path("farm.toml"), SYSTEM_CONFIG):
        if _reachable_file(candidate):
            if candidate is not SYSTEM_CONFIG:
                _check_owner(candidate)
            return candidate
    return None


def _reachable_file(path: Path) -> bool:
    """Whether a file is at ``path`` that this user may reach. One in a directory it may not
    enter (`sudo -u farm farm ps` from root's home, an /etc/farm closed to the caller) is
    not its config: is_file() raised PermissionError there, a traceback from every command."""
    try:
        return path.is_file()
    except PermissionError:
        return False


def _named(path: Path, where: str) -> Path:
    """A config file named by the user, or why it cannot be one."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass  # not there, or not a directory on the way: said below
    except OSError as e:  # a name too long was is_dir()'s traceback; a loop, "no such"
        denied = isinstance(e, PermissionError)
        why = "this user may not reach it (permission denied)" if denied else e.strerror
        raise ConfigError(f"{path}: {why} {where}") from None
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file {where}")
    if not path.is_file():
        if path.exists():  # /dev/null, a FIFO: there, and still no file to read
            raise ConfigError(f"{path}: is not a regular file, not a config file {where}")
        raise ConfigError(f"{path}: no such config file {where}")
    return path


def _check_owner(path: Path) -> None:
    """A ``farm.toml`` found in the working directory is read only when this user (or root)
    owns it and not everyone may write it, as git treats a repository of another user: in a
    shared directory another user's file would choose the sockets our calls go to, the spill
    directory our arguments are written to, and for ``farm up`` the commands it runs."""
    link, info = path.lstat(), path.stat()  # a link of another user's counts as theirs
    whose = None if link.st_uid in (os.getuid(), 0) else f"belongs to uid {link.st_uid}"
    whose = whose or untrusted_because(info)
    # Its relative paths (a store, a socket, a pool's cwd) are read against its folder's
    # path: another user who may rename a directory above it could put theirs there.
    whose = whose or controlled_by_another(path)
    if whose is None:
        return
    raise ConfigError(
        f"{path.resolve()}: {whose}, so it is not read from the working directory;"
        " name it with --config (or $FARM_CONFIG) if you trust it, or remove it"
    )


def resolve(base: Path | None, value: str) -> str:
    """A path written in a config: ``~`` expanded, a relative one taken from ``base`` (the
    config file's folder; None: the working directory). The working directory is read only
    for a relative path: an absolute one (the defaults' socket) needs none, and a command
    run where it was removed refused to use it."""
    resolved = Path(os.path.expanduser(value))
    if resolved.is_absolute():
        return str(resolved)
    return str((base if base is not None else Path(working_directory())) / resolved)


def config_file(path: Path) -> Path:
    """``path`` made absolute, links resolved. A relative one is read against the working
    directory, so where that was removed it is refused in one line (WorkingDirectoryGone)
    rather than os.path.abspath's traceback: it names no file that can be trusted."""
    return (path if path.is_absolute() else Path(working_directory()) / path).resolve()


def config_folder(path: Path) -> Path:
    """The folder of a config file: what its relative paths are read against."""
    return config_file(path).parent


def control_path(explicit: str | os.PathLike[str] | None = None) -> str:
    """Only ``[supervisor] control`` of the config that ``load_config`` would read.

    Commands that just talk to a running supervisor (``farm ps``, ``scale``, ``stop``)
    use this: they need not import, or even find, the workers' modules.
    """
    path = find_config(explicit)
    default = default_control()
    if path is None:
        return default
    if not (raw := read_config_file(path)):  # not the default: "the farm's moved", exit 1
        raise no_settings(path)
    supervisor = raw.get("supervisor", {})
    control = supervisor.get("control", default) if isinstance(supervisor, dict) else default
    if not isinstance(control, str) or not control.strip():
        raise ConfigError(f"{path}: supervisor.control must be the path of a Unix socket")
    return _socket(path, "supervisor.control", config_folder(path), control, "control.sock")


def default_listen() -> list[str]:
    """The local server's addresses when no config names them."""
    return [DEFAULT_SERVER, f"unix:{runtime_dir()}/gearman.sock"]


def default_control() -> str:
    """The supervisor's control socket when no config names it: the built-in config's, and
    what `farm ps`, `scale` and `stop` ask where a file names none (``control_path``)."""
    return f"{runtime_dir()}/control.sock"


@dataclass(frozen=True)
class FarmAddresses:
    """Where a farm answers: its local server's socket and TCP address, or remote servers."""

    unix: str | None  # "unix:/path"
    tcp: str | None  # "HOST:PORT", a wildcard made loopback
    remote: tuple[str, ...] = ()  # [supervisor] servers: the farm runs no server of its own
    source: str = "the built-in defaults"  # the config file they were read from


def local_farm(explicit: str | os.PathLike[str] | None = None) -> FarmAddresses:
    """The addresses of the farm the config (or the defaults) describes."""
    path = find_config(explicit)
    listen: object = default_listen()
    remote: object = []
    local = False  # [supervisor] local_server = true: it answers on its own server too
    base = None  # the defaults' socket path is absolute: resolve() reads no directory for it
    if path is not None:
        if not (raw := read_config_file(path)):  # a half-written file: not the defaults' farm
            raise no_settings(path)
        base = config_folder(path)
        server, supervisor = raw.get("server", {}), raw.get("supervisor", {})
        listen = server.get("listen", listen) if isinstance(server, dict) else listen
        remote = supervisor.get("servers", []) if isinstance(supervisor, dict) else []
        local = isinstance(supervisor, dict) and supervisor.get("local_server") is True
        if isinstance(listen, str):
            listen = [listen]
    where = str(path) if path is not None else FarmAddresses.source
    unix = tcp = None
    for addr in _addresses(where, "server.listen", listen):
        if addr.kind == "unix":
            found = f"unix:{_socket(where, 'server.listen', base, addr.path)}"  # each checked
            unix = unix or found
        elif addr.kind == "tcp" and tcp is None:
            tcp = str(connectable(addr))
    # A relative unix: path is the config file's folder's, as the workers read it.
    servers = tuple(
        f"unix:{_socket(where, 'supervisor.servers', base, a.path)}" if a.kind == "unix" else str(a)
        for a in _addresses(where, "supervisor.servers", remote, hosted=True)
    )
    # Checked all the same: the farm runs its own server too, and that is where it answers.
    return FarmAddresses(unix, tcp, () if local else servers, where)


def _socket(
    where: object, key: str, base: Path | None, path: str, name: str = "gearman.sock"
) -> str:
    """A socket's ``path`` from ``key``, resolved; one longer than a socket's may be (a relative
    one under a deep folder) is refused as farm check refuses it: the CLI named it --server's,
    or the connect said "AF_UNIX path too long"."""
    resolved = resolve(base, path)
    if too_long := socket_path_problem(resolved, f"/run/farm/{name}"):
        raise ConfigError(f"{where}: {key}: {too_long}")
    return resolved


def no_host(text: str) -> str:
    """Why a server to connect to written ":4730" (a listener's every interface) is none."""
    return f"{text!r} names no host; write 127.0.0.1{text.strip()} for this one"


def _addresses(where: object, key: str, values: object, hosted: bool = False) -> list[Address]:
    """The addresses of ``key`` (``hosted``: servers to connect to, each with a host), or the
    one-line error naming the file, the key and the fix (an entry that is no string was read
    as its text: `listen = [3]` sent calls to 3:4730)."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f'{where}: {key}: must be a list of addresses like ["{DEFAULT_SERVER}"]')
    try:
        parsed = [parse_address(v) for v in values]
    except AddressError as e:
        raise ConfigError(f"{where}: {key}: {e}; fix it there") from None
    for text, addr in zip(values, parsed, strict=True):
        if hosted and addr.kind == "tcp" and not addr.host:  # else named as --server's
            raise ConfigError(f"{where}: {key}: {no_host(text)}")
    return parsed


def client_servers(config: str | os.PathLike[str] | None = None) -> str | list[str]:
    """Servers for a client or worker given none: the Unix socket if this user may use it,
    else the TCP address (see the module docstring for the order); ``config``: that file's
    farm, not the search order's."""
    return _servers(tcp_fallback=True, config=config)


def executor_servers() -> str | list[str]:
    """Servers for an Executor given none: ``$FARM_SERVERS``, the ``unix:`` entries of
    ``$GEARMAN_SERVERS``, else the local farm's Unix socket, and nothing else.

    ``$GEARMAN_SERVERS`` is libgearman's variable, often set host-wide for PHP and the
    gearman tools: its TCP entries are nobody's choice to put signed calls on a port that
    every local user can reach (and where the server queues them behind anyone's). The
    ``unix:`` entries of either variable are checked as the config's are
    (``sockettrust.answering``)."""
    env = servers_from_env()
    if env is not None and env[0] == "FARM_SERVERS":  # farm's own: its TCP entries chosen
        fix = "Fix $FARM_SERVERS, or unset it for the config's farm."
        return answering(parse_servers(env[1]), "$FARM_SERVERS", fix, chosen=True)
    if env is not None:
        unix = [s.strip() for s in env[1].split(",") if s.strip().startswith("unix:")]
        if unix:
            return answering(parse_servers(unix), "$GEARMAN_SERVERS")
        try:
            return _servers(tcp_fallback=False, environ=False)
        except ServerUnavailable as exc:
            raise ServerUnavailable(
                f"{exc} ($GEARMAN_SERVERS names only TCP servers, which farm.Executor()"
                " passes over)"
            ) from None
    return _servers(tcp_fallback=False)


def servers_from_env() -> tuple[str, str] | None:
    """The servers variable that is set, and its value: ``$FARM_SERVERS``, else
    ``$GEARMAN_SERVERS``; None when neither is. Blank is unset, as empty is: a unit's
    ``Environment=FARM_SERVERS= `` was "the server list is empty", not the defaults."""
    for name in ("FARM_SERVERS", "GEARMAN_SERVERS"):
        value = os.environ.get(name, "")
        if value.strip():
            return name, value
    return None


def _servers(
    *, tcp_fallback: bool, config: str | os.PathLike[str] | None = None, environ: bool = True
) -> str | list[str]:
    env = servers_from_env() if environ else None
    if env and config is None:  # a config named on the command line says which farm
        return env[1]
    farm = local_farm(config)
    if farm.remote:
        return _remote(farm, tcp_fallback)
    # The Executor's calls go nowhere else; and a farm with no TCP address of its own must
    # not send anyone to the default port, which the squatter may hold as well.
    # Whether it is safe comes first: an unsafe socket is refused, not just passed over.
    unix = farm.unix
    if (
        unix is not None
        and trusted(unix, tcp_fallback and farm.tcp is not None)
        and (usable(unix) or (tcp_fallback and not farm.tcp))
    ):
        return [unix]
    if tcp_fallback:
        tcp = farm.tcp or DEFAULT_SERVER
        _note_another_users_farm(unix, tcp)
        return [tcp]
    where = farm.unix[len("unix:") :] if farm.unix else "(none configured)"
    raise ServerUnavailable(
        f"no farm answers on its Unix socket {where}: is `farm up` running, and may this user"
        " use the socket? farm.Executor() does not fall back to TCP; pass servers= (or set"
        " $FARM_SERVERS) to choose a TCP address knowingly"
    )


def _note_another_users_farm(unix: str | None, tcp: str) -> None:
    """A warning when a client falls back to a port of this host another user's farm holds,
    this farm's socket not there: where users each run a farm, the first up holds the port,
    and the others' `farm status`, `submit`, `worker` and farm.Client() used it unsaid.
    A socket there but not this user's to use is a farm shared over TCP: nothing said."""
    if unix is None or os.path.lexists(unix[len("unix:") :]):
        return
    addr = parse_address(tcp)
    who = another_users_listener(addr.host, addr.port) if addr.kind == "tcp" else None
    if who is None:
        return
    log.warning(
        "no farm of this user answers at %s, and %s is another user's (%s): what is sent"
        " there goes to their farm. Start this user's farm (`farm up`, with a [server]"
        " listen port of its own), or name the farm to use (--server, $FARM_SERVERS)",
        unix[len("unix:") :],
        tcp,
        who,
    )


def _remote(farm: FarmAddresses, tcp_fallback: bool) -> list[str]:
    """The servers of a farm whose job servers are remote (``[supervisor] servers``). Their
    ``unix:`` entries are checked as the local socket is: a client drops one another user
    could have planted while a TCP entry remains, else refuses. The Executor takes only the
    ``unix:`` ones, where its ``farm.*`` pool registers (the TCP ones would carry signed
    calls, arguments readable, over a network, and no farm server hands them to a worker
    there), and refuses when none answers, as for the local socket."""
    unix = [s for s in farm.remote if s.startswith("unix:")]
    if not tcp_fallback and not unix:
        raise ServerUnavailable(
            f"{farm.source}: [supervisor] servers names no unix: job server on this host, so no"
            " farm.* pool serves farm.Executor(); add the unix:/path of a farm server there, or"
            " set local_server = true"
        )
    if not tcp_fallback:
        return answering(unix, f"{farm.source}: [supervisor] servers")
    dropped = [s for s in unix if not trusted(s, len(unix) < len(farm.remote))]
    return [s for s in farm.remote if s not in dropped]


def executor_spill() -> tuple[str | None, int | None]:
    """``[executor] spill_dir`` (resolved against the config's folder) and ``max_spill_mb``
    of the config the search order finds; None for what it does not set."""
    path = find_config()
    if path is None:
        return None, None
    executor = read_config_file(path).get("executor", {})
    if not isinstance(executor, dict):
        return None, None
    where, mb = executor.get("spill_dir"), executor.get("max_spill_mb")
    if where is not None and (not isinstance(where, str) or not where.strip()):
        raise ConfigError(f"{path}: executor.spill_dir must be the path of a directory")
    if mb is not None and (type(mb) is not int or mb <= 0):
        raise ConfigError(f"{path}: executor.max_spill_mb must be a whole number of MiB > 0")
    return (resolve(config_folder(path), where) if where else None), mb
