"""What the server process is started with: ``ServerOptions``, one field a setting, each
default written once (``farm server``'s flags, farm.server.options, take theirs from it)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from farm import protocol as p
from farm.net import DEFAULT_PORT, KEEPALIVE, parse_address
from farm.paths import NoStateDirectory, default_store, state_dir

__all__ = [
    "DEFAULTS",
    "NO_STORE",
    "ServerOptions",
    "default_store_path",
    "log_level",
    "store_help",
    "store_spec_problem",
]

# The one spelling of "keep background jobs in memory only", on the command line as in
# farm.toml: any other word is a file's path ("memory" too), so that a typo, or an unset
# variable in `--store "$STORE"`, is never a server that loses every job at its restart.
NO_STORE = "none"


def store_spec_problem(spec: str) -> str | None:
    """What is wrong with a store as written (``--store``, ``[server] store``), None where it
    is NO_STORE or a path; whether the path's file will do is the config's store_problem's."""
    if not spec.strip():  # `--store ''` kept jobs in memory without a word
        return f'must be a file path or "{NO_STORE}"'
    if spec != NO_STORE and spec.strip().lower() in (NO_STORE, "null", "off"):
        # Else a SQLite file of that name (beside the config, or no start in /etc).
        return f'{spec!r}: write "{NO_STORE}" to keep jobs in memory'
    return None


@dataclass
class ServerOptions:
    """Everything the server process is started with."""

    port: int = DEFAULT_PORT
    # TCP addresses in farm.net's normal form, each with its port; ``-L unix:PATH`` lands in unix.
    listen: list[str] = field(default_factory=lambda: [f"127.0.0.1:{DEFAULT_PORT}"])
    unix: list[str] = field(default_factory=list)
    unix_mode: int = 0o660
    store: str = NO_STORE
    store_sync: str = "normal"
    job_retries: int = 0
    max_packet: int = p.DEFAULT_MAX_PACKET
    exceptions: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    max_connections: int = 10000
    max_queue: int = 0
    max_queued_bytes: int = 1 << 30
    backlog: int = 1024
    verbose: int = 0
    log_file: str = "stderr"
    log_format: str = "text"  # or "json": one object a line (farm.logs)
    pid_file: str | None = None
    parent_pid: int | None = None
    progress_fd: int | None = None  # the supervisor's pipe: replay goes on (systemd's start)
    # Started by `farm up`, whose supervisor (parent_pid) stops it: a SIGTERM while that
    # lives came to every process of the unit (`systemctl kill farm`), and is left to the
    # supervisor, which drains the workers, then stops this server (SIGUSR1). Stopping here
    # at once cut the workers' jobs in hand off: a finished background job ran again.
    supervised: bool = False
    # The functions farm up's pools serve: labelled by name in the metrics from the start,
    # before their workers register again (farm.server.exposition).
    pool_functions: frozenset[bytes] = frozenset()
    # Who may serve the reserved ``farm.*`` functions (the Executor's signed calls): workers
    # on the Unix socket whose peer uid is one of these. Nobody over TCP. SO_PEERCRED gives
    # a peer's effective uid, so the default is ours: a setuid server's real uid is not the
    # uid its own workers connect with.
    worker_uids: frozenset[int] = field(default_factory=lambda: frozenset({os.geteuid()}))
    # "read-only": cancel job, maxqueue N, create/drop function only on the Unix socket.
    tcp_admin: str = "full"
    max_abilities: int = 4096  # functions one connection may register
    max_tcp_abilities: int = 262144  # registrations all TCP connections together may hold
    max_functions: int = 65536  # functions the server holds before TCP peers may add none
    max_partial_bytes: int = 256 << 20  # bytes of unfinished packets all connections may hold
    max_unread_bytes: int = 256 << 20  # bytes of replies TCP peers together may leave unread
    # Seconds a client that reads none of its replies may hold up a worker streaming to it
    # (WORK_DATA, WARNING) before it is disconnected: the worker is not read meanwhile.
    stall_timeout: float = 60.0
    # Seconds a woken worker has to grab, or a pushed job to be accepted, before another
    # worker gets the job (also the job model's own default, dispatch.WAKE_DEADLINE).
    wake_deadline: float = 0.5
    # TCP keepalive of every TCP peer (farm.net.KEEPALIVE): a worker whose host died
    # silently holds its job no longer than idle + interval x count seconds.
    keepalive_idle: int = KEEPALIVE[0]
    keepalive_interval: int = KEEPALIVE[1]
    keepalive_count: int = KEEPALIVE[2]
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint (docs/monitoring.md)
    # Who the hints of a start-up error speak to: "flags" (farm server) or "config" (the
    # local server of `farm up`, whose user has [server] keys, not flags).
    hints: str = "flags"
    daemon: bool = False  # -d: detach once listening (gearmand's --daemon)
    ignored: tuple[tuple[str, str], ...] = ()  # gearmand flags given, farm has no use for: why


#: The defaults of `farm server`'s flags are the fields' defaults above, written once.
DEFAULTS = ServerOptions()

#: Descriptors a server keeps beyond its connections and what it holds open as it fits its
#: limit (farm.server.process): listeners and their [::1] twins, the store's files, the
#: metrics, the event loop's own, the log. An idle server holds about 23 in all.
FD_MARGIN = 32
#: What `farm up` counts the local server's own descriptors at, before its connections: its
#: margin, and what it holds as it fits its limit (stdio, the supervisor's pipes).
SERVER_FDS = FD_MARGIN + 8


def log_level(verbose: int) -> int:
    """The level the server logs at for ``verbose`` (-v's count; gearmand's ``--verbose
    LEVEL`` is read as one): warnings, INFO, then DEBUG."""
    return (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]


def default_store_path(
    listen: Sequence[str] = (), unix: Sequence[str] = (), *, make: bool = False
) -> str:
    """Where background jobs live when nothing else is said: a file per server in farm's
    state directory, keyed by the first TCP port, else the first Unix path. ``make``: the
    server is about to use it (farm.paths.state_dir)."""
    port = parse_address(listen[0]).port if listen else None
    # NoStateDirectory: no home
    return str(default_store(port, unix[0] if unix else None, make=make))


def store_help() -> str:
    """Where ``--store``'s help says the default goes."""
    try:
        return f"in {state_dir()}, e.g. {default_store(DEFAULT_PORT).name}"
    except NoStateDirectory:  # said when it is needed: -h works anywhere
        return "in farm's state directory, e.g. ~/.local/state/farm/queue-4730.db"
