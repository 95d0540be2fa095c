"""A small client of the admin text protocol, for the CLI and the supervisor.

One command a connection, as ``gearadmin`` does: connect (TCP or Unix socket,
through the one address parser in ``farm.net``), send the line, read until the
reply is whole, close.
"""

from __future__ import annotations

import ssl
import threading

from farm.net import connect, recv
from farm.protocol import ProtocolError
from farm.protocol.admin import StatusRow, parse_status, reply_complete

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
    ``status`` (0 when it lists none), or None when none answers.

    Every server is asked at once, each in a thread of its own: asked in turn, each hung
    server (one that accepts and never answers) ahead of the answering one cost a whole
    ``timeout``, and an Executor's constructor waited for all of them in a row."""
    if len(addresses) == 1:
        return _count(_status_rows(addresses[0], timeout), function)
    asks = [_Ask(address, timeout) for address in addresses]
    for ask in asks:  # in the given order: the first that answers counts, as before
        ask.done.wait()  # no longer than its timeout: admin_query gives up then
        count = _count(ask.outcome, function)
        if count is not None:
            return count
    return None


def _status_rows(address: str, timeout: float) -> list[StatusRow] | None:
    """The server's ``status`` listing; None when it does not answer."""
    try:
        return parse_status(admin_query(address, "status", timeout=timeout))
    except (OSError, ValueError, ProtocolError):
        return None


def _count(rows: list[StatusRow] | BaseException | None, function: str) -> int | None:
    if isinstance(rows, BaseException):
        raise rows  # not a server that did not answer: a bug, for the caller to see
    if rows is None:
        return None
    return next((row.workers for row in rows if row.function == function), 0)


class _Ask:
    """One server's ``status``, asked in a daemon thread: a hung server left behind once
    another answered holds no exit (it gives up within its timeout anyway)."""

    def __init__(self, address: str, timeout: float) -> None:
        self.outcome: list[StatusRow] | BaseException | None = None
        self.done = threading.Event()
        name = f"farm-status {address}"
        threading.Thread(target=self._run, args=(address, timeout), name=name, daemon=True).start()

    def _run(self, address: str, timeout: float) -> None:
        try:
            self.outcome = _status_rows(address, timeout)
        except BaseException as exc:  # raised in the caller's thread, as when asked there
            self.outcome = exc
        finally:
            self.done.set()


def server_metrics(address: str, *, timeout: float = 5.0) -> str:
    """A farm server's metrics in Prometheus' text format (admin command ``metrics``)."""
    reply = admin_query(address, "metrics", timeout=timeout)
    if not reply.endswith("\n.\n"):
        raise OSError(f"job server {address} did not answer `metrics`: {reply[:80]!r}")
    return reply[:-2]
