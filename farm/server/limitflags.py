"""The server's flags for what its peers may hold and do (the limits on connections, queues,
functions and buffered bytes, whether WORK_EXCEPTION reaches clients, who may serve the
reserved functions, the admin over TCP, the deadlines on stalled peers, TCP keepalive): a
part of farm.server.options' parser, in its --help order."""

from __future__ import annotations

import argparse

from farm.server.settings import DEFAULTS

__all__ = ["add_limit_flags"]


class _Noted(argparse.Action):
    """Stores the value as "store" does, and notes the flag as given (``ns.given``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.option_strings[0]}


def add_limit_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULTS.max_connections,
        metavar="N",
        help="connections beyond this are closed at once, the reason in the log"
        " (default %(default)s)",
    )
    ap.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULTS.max_queue,
        metavar="N",
        help="jobs per function, queued or running, before QUEUE_ERROR; the admin maxqueue"
        " overrides (default %(default)s: none)",
    )
    ap.add_argument(
        "--max-queued-bytes",
        type=int,
        default=DEFAULTS.max_queued_bytes,
        metavar="BYTES",
        help="bytes all live jobs may hold (arguments, 512 a job); more: QUEUE_ERROR"
        f" (default {DEFAULTS.max_queued_bytes >> 30} GiB; 0: no limit)",
    )
    ap.add_argument(
        "--exceptions",
        action="store_true",
        help="forward WORK_EXCEPTION to every client by default",
    )
    ap.add_argument(
        "--worker-uid",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="a user whose workers may serve the reserved farm.* functions over the Unix"
        " socket (repeatable; default: the server's own user; never over TCP)",
    )
    ap.add_argument(
        "--tcp-admin",
        choices=("full", "read-only"),
        default=DEFAULTS.tcp_admin,
        help="read-only: admin commands that change state (cancel job, maxqueue F [N],"
        " create/drop function) only on the Unix socket (default: %(default)s, as gearmand)",
    )
    ap.add_argument(
        "--max-abilities",
        type=int,
        default=DEFAULTS.max_abilities,
        metavar="N",
        help="functions one connection may register; past it: ERROR, close (default %(default)s)",
    )
    ap.add_argument(
        "--max-tcp-abilities",
        type=int,
        default=DEFAULTS.max_tcp_abilities,
        metavar="N",
        help="registrations (a function on a connection) all TCP connections together may hold;"
        " past it a CAN_DO over TCP gets ERROR QUEUE_ERROR (default %(default)s)",
    )
    ap.add_argument(
        "--max-functions",
        type=int,
        default=DEFAULTS.max_functions,
        metavar="N",
        help="functions the server holds (registered, queued or running) past which a TCP peer"
        " naming a new one gets ERROR; Unix-socket peers may still (default %(default)s)",
    )
    ap.add_argument(
        "--max-partial-bytes",
        type=int,
        default=DEFAULTS.max_partial_bytes,
        action=_Noted,  # given or not: its refusal says which
        metavar="BYTES",
        help="bytes of packets not yet whole that all connections together may hold; the"
        " connection that goes past it gets ERROR and is closed"
        f" (default {DEFAULTS.max_partial_bytes >> 20} MiB)",
    )
    ap.add_argument(
        "--max-unread-bytes",
        type=int,
        default=DEFAULTS.max_unread_bytes,
        action=_Noted,
        metavar="BYTES",
        help="bytes of replies that TCP peers not reading them may leave buffered, all"
        " together; past it the one leaving the most is disconnected"
        f" (default {DEFAULTS.max_unread_bytes >> 20} MiB)",
    )
    ap.add_argument(
        "--stall-timeout",
        type=float,
        default=DEFAULTS.stall_timeout,
        metavar="SECONDS",
        help="how long a client that takes none of its replies may hold up a worker streaming"
        " to it before it is disconnected; one taking a TCP segment or a socket buffer's worth"
        " is timed again (default %(default)s)",
    )
    ap.add_argument(
        "--wake-deadline",
        type=float,
        default=DEFAULTS.wake_deadline,
        metavar="SECONDS",
        help="how long a woken worker has to come for its job, or a pushed job to be"
        " accepted, before another worker gets it (default %(default)s)",
    )
    for flag, default, what in (
        ("--keepalive-idle", DEFAULTS.keepalive_idle, "seconds of silence before a probe"),
        ("--keepalive-interval", DEFAULTS.keepalive_interval, "seconds between probes"),
        ("--keepalive-count", DEFAULTS.keepalive_count, "probes unanswered: the peer is gone"),
    ):  # gearmand's flags; farm has keepalive on whatever they say (--keepalive is a no-op)
        ap.add_argument(
            flag,
            type=int,
            default=default,
            metavar="N",
            help=f"TCP keepalive: {what} (default %(default)s)",
        )
