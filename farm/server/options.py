"""The server's options: gearmand's common flags plus farm's own, parsed and checked into
a ``ServerOptions`` (farm.server.settings, where each default is written once)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import NoReturn

from farm.logs import LOG_FORMATS
from farm.net import DEFAULT_PORT, parse_port, socket_path_problem
from farm.server.flagvalues import default_store, listen_addresses, metrics_address, octal_mode
from farm.server.gearmandflags import add_gearmand_flags
from farm.server.limitflags import add_limit_flags
from farm.server.settings import DEFAULTS, ServerOptions, store_help, store_spec_problem

__all__ = ["DEFAULTS", "OptionError", "ServerOptions", "build_parser", "parse_args", "refusal"]


#: The largest backlog listen() takes (a C int); the kernel lowers any to net.core.somaxconn.
MAX_BACKLOG = 2**31 - 1


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line and exit code 2, not a screenful of usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (usage: {self.prog} --help)\n")


class OptionError(ValueError):
    """A flag the server would refuse, and why (see ``refusal``)."""


class _Checker(_Parser):
    def error(self, message: str) -> NoReturn:
        raise OptionError(message)


def build_parser(
    prog: str = "farm server", parser: type[_Parser] = _Parser
) -> argparse.ArgumentParser:
    ap = parser(
        prog=prog, description="farm's Gearman job server (accepts gearmand's common flags)."
    )
    ap.add_argument(
        "-p",
        "--port",
        metavar="PORT",
        help=f"TCP port for -L addresses that name none (default {DEFAULT_PORT})",
    )
    ap.add_argument(
        "-L",
        "--listen",
        action="append",
        metavar="ADDR",
        help="address to listen on, repeatable: HOST, HOST:PORT, [IPv6]:PORT or unix:PATH "
        "(default 127.0.0.1; 0.0.0.0 or :: for every interface)",
    )
    ap.add_argument(
        "--unix", action="append", default=[], metavar="PATH", help="also listen on a Unix socket"
    )
    ap.add_argument(
        "--unix-mode",
        type=octal_mode,
        default=DEFAULTS.unix_mode,
        metavar="MODE",
        help=f"Unix socket permissions (octal, default {DEFAULTS.unix_mode:o})",
    )
    ap.add_argument(
        "--store",
        metavar="PATH|none",
        help="SQLite file for durable background jobs, or 'none' (default: one file per server"
        f" {store_help()})",
    )
    ap.add_argument(
        "--store-sync",
        choices=("normal", "full"),
        default=DEFAULTS.store_sync,
        help="normal survives a killed server; full also survives power loss (fsync per commit;"
        " default %(default)s)",
    )
    ap.add_argument(
        "-j",
        "--job-retries",
        type=int,
        default=DEFAULTS.job_retries,
        metavar="N",
        help="fail a job after N worker deaths (default %(default)s: never)",
    )
    ap.add_argument(
        "--max-packet",
        type=int,
        default=DEFAULTS.max_packet,
        metavar="BYTES",
        help=f"largest packet body accepted (default {DEFAULTS.max_packet >> 20} MiB)",
    )
    ap.add_argument("--tls-cert", metavar="FILE", help="serve TCP over TLS with this certificate")
    ap.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    ap.add_argument(
        "--tls-ca", metavar="FILE", help="require client certificates signed by this CA"
    )
    add_limit_flags(ap)  # farm.server.limitflags: what each peer may hold and do
    ap.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off; under farm up"
        " the supervisor serves them; the admin command `metrics` answers anyway)",
    )
    ap.add_argument(
        "-b",
        "--backlog",
        type=int,
        default=DEFAULTS.backlog,
        metavar="N",
        help="listen backlog (default %(default)s)",
    )
    ap.add_argument(
        "-l",
        "--log-file",
        default=DEFAULTS.log_file,
        metavar="FILE",
        help="log file, 'stderr' (the default) or 'none'",
    )
    ap.add_argument("-P", "--pid-file", metavar="FILE", help="write the process id here")
    ap.add_argument(
        "--parent-pid", type=int, metavar="PID", help="stop (SIGTERM) when this parent process dies"
    )
    ap.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (readable, the default) or json (one object a line; docs/monitoring.md)",
    )
    ap.add_argument("--hints", choices=("flags", "config"), default="flags", help=argparse.SUPPRESS)
    ap.add_argument("--progress-fd", type=int, metavar="FD", help=argparse.SUPPRESS)  # farm up's
    # farm up's too: a SIGTERM while the parent lives is the supervisor's as well (`systemctl
    # kill`), which stops this server once its workers are done (ServerOptions.supervised).
    ap.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    # farm up's too: each function its pools serve (ServerOptions.pool_functions).
    ap.add_argument("--pool-function", action="append", default=[], help=argparse.SUPPRESS)
    add_gearmand_flags(ap)  # -v/--verbose, -V, and those accepted and ignored
    return ap


def refusal(argv: Sequence[str]) -> str | None:
    """Why the server would not start with the flags ``argv`` (its first objection), or None.
    farm.config checks the [server] keys that become flags with it, so each limit is written
    once, here."""
    try:  # the flags alone: the store is [server] store's to check
        parse_args(["--store", "none", *argv], parser=_Checker)
    except OptionError as exc:
        return str(exc)
    return None


def _room_for_a_packet(ap: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """--max-partial-bytes and --max-unread-bytes each hold one whole packet at least. One
    left at its default under a larger --max-packet was refused as if it had been given
    ("--max-partial-bytes must be at least --max-packet"), where only --max-packet was."""
    flags = {"--max-partial-bytes": "packet", "--max-unread-bytes": "reply"}
    defaulted: dict[str, int] = {}
    for flag, whole in flags.items():
        value = getattr(ns, flag[2:].replace("-", "_"))
        if value >= ns.max_packet:
            continue
        if flag not in getattr(ns, "given", ()):
            defaulted[flag] = value
        else:
            ap.error(f"{flag} must be at least --max-packet (one whole {whole})")
    if defaulted:
        ap.error(
            f"--max-packet {ns.max_packet} is over the default"
            f" {' and '.join(f'{flag} ({value})' for flag, value in defaulted.items())}: a"
            f" packet that large needs {' and '.join(defaulted)} raised too, to at least"
            f" {ns.max_packet}"
        )


def parse_args(
    argv: Sequence[str] | None = None, prog: str = "farm server", parser: type[_Parser] = _Parser
) -> ServerOptions:
    ap = build_parser(prog, parser)
    ns = ap.parse_args(argv)
    port = DEFAULT_PORT
    if ns.port is not None:
        try:
            port = parse_port(ns.port)
        except ValueError as exc:
            ap.error(f"-p {ns.port}: {exc}")
    listen, unix = listen_addresses(ap, ns.listen or ["127.0.0.1"], port)
    for path in ns.unix:  # -L unix:PATH is held to the same (parse_address)
        problem = socket_path_problem(path) if path.strip() else "needs a socket path"
        if problem:
            ap.error(f"--unix {problem}")
    if ns.store is not None and (problem := store_spec_problem(ns.store)):
        ap.error(f"--store {problem}")
    if ns.job_retries < 0:
        ap.error("--job-retries must be 0 (never fail) or a positive count")
    if (ns.tls_key or ns.tls_ca) and not ns.tls_cert:
        ap.error("--tls-key and --tls-ca need --tls-cert")
    if ns.max_queue < 0:
        ap.error("--max-queue must be >= 0 (0: no limit)")
    if ns.max_queued_bytes < 0:
        ap.error("--max-queued-bytes must be >= 0 (0: no limit)")
    if ns.max_connections < 1:
        ap.error("--max-connections must be at least 1")
    _room_for_a_packet(ap, ns)
    if not 0.01 <= ns.wake_deadline <= 60:
        ap.error("--wake-deadline must be between 0.01 and 60 seconds")
    if not 0.1 <= ns.stall_timeout <= 86400:
        ap.error("--stall-timeout must be between 0.1 and 86400 seconds")
    for flag, value, top in (  # Linux's bounds (setsockopt refuses past them)
        ("--keepalive-idle", ns.keepalive_idle, 32767),
        ("--keepalive-interval", ns.keepalive_interval, 32767),
        ("--keepalive-count", ns.keepalive_count, 127),
    ):
        if not 1 <= value <= top:
            ap.error(f"{flag} must be from 1 to {top}")
    if ns.max_functions < 1:
        ap.error("--max-functions must be at least 1")
    if ns.max_abilities < 1:
        ap.error("--max-abilities must be at least 1")
    if ns.max_tcp_abilities < 1:  # apart: `farm up` names the key of the first flag named
        ap.error("--max-tcp-abilities must be at least 1")
    if ns.max_packet < 1024:
        ap.error("--max-packet must be at least 1024 bytes")
    if not 1 <= ns.backlog <= MAX_BACKLOG:  # past a C int, listen() failed in a traceback
        ap.error(f"--backlog must be at least 1 and at most {MAX_BACKLOG}")
    if any(uid < 0 for uid in ns.worker_uid):
        ap.error("--worker-uid must be a user id (>= 0)")
    if ns.parent_pid is not None and ns.parent_pid < 1:
        ap.error("--parent-pid must be a process id (>= 1)")
    if ns.supervised and ns.parent_pid is None:
        ap.error("--supervised needs --parent-pid: the supervisor that stops this server")
    if ns.parent_pid is not None and ns.daemon:
        ap.error("--parent-pid and -d/--daemon: a detached server has no parent to follow")
    return ServerOptions(
        port=port,
        listen=listen,
        unix=unix + ns.unix,
        unix_mode=ns.unix_mode,
        store=ns.store
        if ns.store is not None
        else ns.libsqlite3_db or default_store(ap, listen, unix + ns.unix),
        store_sync=ns.store_sync,
        job_retries=ns.job_retries,
        max_packet=ns.max_packet,
        max_connections=ns.max_connections,
        max_queue=ns.max_queue,
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        tls_ca=ns.tls_ca,
        max_queued_bytes=ns.max_queued_bytes,
        exceptions=ns.exceptions,
        backlog=ns.backlog,
        verbose=ns.verbose,
        log_file=ns.log_file,
        log_format=ns.log_format,
        pid_file=ns.pid_file,
        parent_pid=ns.parent_pid,
        progress_fd=ns.progress_fd,
        supervised=ns.supervised,
        pool_functions=frozenset(os.fsencode(name) for name in ns.pool_function),
        worker_uids=frozenset(ns.worker_uid or [os.geteuid()]),  # as ServerOptions'
        tcp_admin=ns.tcp_admin,
        max_abilities=ns.max_abilities,
        max_tcp_abilities=ns.max_tcp_abilities,
        max_functions=ns.max_functions,
        max_partial_bytes=ns.max_partial_bytes,
        max_unread_bytes=ns.max_unread_bytes,
        stall_timeout=ns.stall_timeout,
        wake_deadline=ns.wake_deadline,
        keepalive_idle=ns.keepalive_idle,
        keepalive_interval=ns.keepalive_interval,
        keepalive_count=ns.keepalive_count,
        metrics=metrics_address(ap, ns.metrics),
        hints=ns.hints,
        daemon=ns.daemon,
        ignored=tuple(ns.ignored),
    )
