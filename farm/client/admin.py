"""A small client of the admin text protocol, for the CLI and the supervisor.

One command a connection, as ``gearadmin`` does: connect (TCP or Unix socket,
through the one address parser in ``farm.net``), send the line, read until the
reply is whole, close.
"""

from __future__ import annotations

import ssl

from farm.net import connect, recv
from farm.protocol import ProtocolError
from farm.protocol.admin import parse_status, reply_complete

__all__ = ["admin_query", "server_metrics", "function_workers"]


def admin_query(
    address: str, command: str, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> str:
    """Send one admin command to the job server at ``address``; its whole reply as text.

    Raises OSError (or ValueError for an address that does not parse); ConnectionError when
    the server closes the connection before its reply is whole, which an empty listing
    would otherwise pass for (a TLS listener spoken to in plain text closes it unanswered).
    """
    with connect(address, timeout, tls) as sock:
        sock.settimeout(timeout)
        sock.sendall(command.encode() + b"\n")
        # A bytearray: a listing may be tens of MB (any local user can make the server hold
        # 65,536 functions), and bytes joined chunk by chunk took 12 s to read 34 MB.
        buf = bytearray()
        while not reply_complete(buf):
            data = recv(sock, 65536)
            if not data:
                hint = "" if buf or tls else " (a TLS server? set $FARM_TLS_CA)"
                what = command.split()[0] if command.strip() else command
                raise ConnectionError(
                    f"the job server closed the connection before answering {what!r}{hint}"
                )
            buf += data
    return buf.decode("utf-8", "replace")


def function_workers(addresses: list[str], function: str, *, timeout: float = 2.0) -> int | None:
    """How many workers serve ``function`` on the first of ``addresses`` that answers
    ``status`` (0 when it lists none), or None when none answers."""
    for address in addresses:
        try:
            rows = parse_status(admin_query(address, "status", timeout=timeout))
        except (OSError, ValueError, ProtocolError):
            continue
        for row in rows:
            if row.function == function:
                return row.workers
        return 0
    return None


def server_metrics(address: str, *, timeout: float = 5.0) -> str:
    """A farm server's metrics in Prometheus' text format (admin command ``metrics``)."""
    reply = admin_query(address, "metrics", timeout=timeout)
    if not reply.endswith("\n.\n"):
        raise OSError(f"job server {address} did not answer `metrics`: {reply[:80]!r}")
    return reply[:-2]
