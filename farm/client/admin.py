"""A small client of the admin text protocol, for the CLI and the supervisor.

One command a connection, as ``gearadmin`` does: connect (TCP or Unix socket,
through the one address parser in ``farm.net``), send the line, read until the
reply is whole, close.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

from farm.client.serverpick import STAGGER  # one rule for every face
from farm.net import connect, recv
from farm.protocol import ProtocolError
from farm.protocol.admin import StatusRow, parse_status, reply_complete, workers_serving

__all__ = [
    "admin_query",
    "server_metrics",
    "function_workers",
    "MAX_REPLY",
    "ReplyTooLarge",
    "reply_size",
]

#: Bytes of one admin reply read before it is given up (``max_reply``). A peer on the port
#: that streams without ever ending a reply (any local user may listen on a TCP port of
#: 127.0.0.1) made the reader hold all it sent until the timeout: gigabytes on loopback.
#: The largest listings a farm server makes with its default limits, from TCP peers: a
#: `status` of 65,536 functions (--max-functions) of 512-byte names (MAX_FUNCTION) is about
#: 35 MB, a `workers` of 262,144 registrations (--max-tcp-abilities) about 140 MB; 256 MiB
#: leaves room for the farm's own workers on the Unix socket beside them. `jobs` grows with
#: --max-queued-bytes instead (`farm jobs` asks with a cap of its own).
MAX_REPLY = 256 << 20


class ReplyTooLarge(ConnectionError):
    """An admin reply ran past ``max_reply`` bytes; the connection was closed. ``what`` is
    the command's first word, ``limit`` the cap: the CLI words it in its own flags."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            f"the job server's answer to {what!r} ran past {reply_size(limit)}, the most"
            " read of one reply (max_reply); gave up and closed the connection"
        )
        self.what = what
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled or copied, made again from these, not from its message (farm.errors)
        return type(self), (self.what, self.limit), self.__dict__


def admin_query(
    address: str,
    command: str,
    *,
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    errors: str = "replace",
    max_reply: int = MAX_REPLY,
) -> str:
    """Send one admin command to the job server at ``address``; its whole reply as text,
    decoded as UTF-8 with ``errors`` (surrogateescape keeps a name's bytes: ``text_bytes``).

    Raises OSError (or ValueError for an address that does not parse); ConnectionError when
    the server closes the connection before its reply is whole, which an empty listing
    would otherwise pass for (a TLS listener spoken to in plain text closes it unanswered);
    TimeoutError when the reply is not whole ``timeout`` seconds after the connect;
    ReplyTooLarge (a ConnectionError), the connection closed, when it runs past
    ``max_reply`` bytes (``MAX_REPLY``, 256 MiB, by default), whole or not.
    """
    if max_reply < 1:
        raise ValueError(f"max_reply must be at least 1 byte, not {max_reply}")
    with connect(address, timeout, tls) as sock:
        return _reply(sock, command, timeout, tls, max_reply).decode("utf-8", errors)


def _reply(
    sock: socket.socket,
    command: str,
    timeout: float,
    tls: ssl.SSLContext | None,
    max_reply: int = MAX_REPLY,
) -> bytearray:
    # The whole reply by then, not each read: a server that trickles a listing and never
    # ends it, or a port that streams what is no reply, was read for ever (and held).
    deadline = time.monotonic() + timeout
    what = command.split()[0] if command.strip() else command
    sock.settimeout(timeout)
    sock.sendall(command.encode() + b"\n")
    # A bytearray: a listing may be tens of MB (any local user can make the server hold
    # 65,536 functions), and bytes joined chunk by chunk took 12 s to read 34 MB.
    buf = bytearray()
    while not reply_complete(buf):
        try:
            left = deadline - time.monotonic()
            if left <= 0:  # (a stream: every read gets something at once)
                raise TimeoutError
            sock.settimeout(left)
            data = recv(sock, 65536)
        except TimeoutError:
            # Not a byte of it is a server that is hung or stopped, not a reply cut short:
            # "not whole" sent the reader after a broken answer.
            late = (
                f"the job server's answer to {what!r} was not whole in {timeout}s"
                if buf
                else f"the job server did not answer {what!r} within {timeout}s (hung or stopped?)"
            )
            raise TimeoutError(late) from None
        if not data:
            hint = "" if buf or tls else " (a TLS server? set $FARM_TLS_CA)"
            raise ConnectionError(
                f"the job server closed the connection before answering {what!r}{hint}"
            )
        buf += data
        if len(buf) > max_reply:  # checked as it grows: the reader holds one read past it
            raise ReplyTooLarge(what, max_reply)
    return buf


def reply_size(n: int) -> str:
    """A reply cap as the errors say it: whole MiB as such, else bytes."""
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n} bytes"


def function_workers(
    addresses: list[str], function: str, *, timeout: float = 2.0, stagger: float = STAGGER
) -> int | None:
    """How many workers serve ``function`` on the first of ``addresses`` that answers
    ``status`` (0 when it lists none), or None when none answers.

    Asked in turn, each hung server (one that accepts and never answers) ahead of the
    answering one cost a whole ``timeout``; asked all at once, every server got a connection
    and sent its whole listing (it can be large) when one answer was enough. So, as happy
    eyeballs: the first is asked at once, the next when the one before failed or has not
    answered within ``stagger`` seconds, and once the first in the given order that answers
    has, the others are closed and no more are asked. Each server has ``timeout`` to answer,
    and the whole wait ends by ``timeout`` after the last one could have been asked, even
    with a server that trickles its bytes or a name that takes long to resolve.
    """
    asks = _Asks(addresses, timeout, stagger)
    try:
        return _count(asks.first_answer(), function)
    finally:
        asks.close()


def _count(rows: list[StatusRow] | BaseException | None, function: str) -> int | None:
    if isinstance(rows, BaseException):
        raise rows  # not a server that did not answer: a bug, for the caller to see
    if rows is None:
        return None
    return workers_serving(rows, function)


class _Asks:
    """The ``status`` asks of one ``function_workers``, started in the order given; one
    condition, notified by each ask that ends, guards them all."""

    def __init__(self, addresses: list[str], timeout: float, stagger: float) -> None:
        self.addresses = addresses
        self.timeout = timeout
        self.stagger = stagger
        self.changed = threading.Condition()
        self.started: list[_Ask] = []
        self.deadline = time.monotonic() + timeout + stagger * max(len(addresses) - 1, 0)

    def first_answer(self) -> list[StatusRow] | BaseException | None:
        """The outcome of the first server in the given order that answers; None when none
        does by its time (a server still undecided at the deadline counts as not answering)."""
        next_at = time.monotonic()
        with self.changed:
            while True:
                now = time.monotonic()
                undecided = [ask for ask in self.started if not ask.gave_up(now, self.deadline)]
                for ask in self.started:
                    if ask.answered:
                        return ask.outcome  # every ask before it failed or gave up
                    if ask in undecided:
                        break
                else:
                    if len(self.started) == len(self.addresses):
                        return None
                if self.started and self.started[-1] not in undecided:
                    next_at = now  # the server asked last failed: ask the next at once
                answered = any(ask.answered for ask in self.started)
                more = len(self.started) < len(self.addresses) and not answered
                if more and now >= next_at:
                    address = self.addresses[len(self.started)]
                    self.started.append(_Ask(address, self.timeout, self.changed))
                    next_at = now + self.stagger
                    continue
                wake = min([self.deadline, *(ask.expires for ask in undecided)])
                if more:
                    wake = min(wake, next_at)
                self.changed.wait(max(wake - now, 0))

    def close(self) -> None:
        for ask in self.started:
            ask.close()


class _Ask:
    """One server's ``status``, asked in a daemon thread: one stuck in a name lookup or in
    a connect left behind holds no exit, and closes its socket once it has one."""

    def __init__(self, address: str, timeout: float, changed: threading.Condition) -> None:
        self.address = address
        self.timeout = timeout
        self.changed = changed
        self.expires = time.monotonic() + timeout
        self.outcome: list[StatusRow] | BaseException | None = None
        self.done = False
        self.closed = False
        self.sock: socket.socket | None = None
        name = f"farm-status {address}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    @property
    def answered(self) -> bool:
        return self.done and self.outcome is not None

    def gave_up(self, now: float, deadline: float) -> bool:
        """Failed, or out of time: its own ``timeout`` (the whole reply), or the ask's."""
        return (self.done and self.outcome is None) or now >= min(self.expires, deadline)

    def close(self) -> None:
        """Stop asking: a listing still coming in is cut off (its reader wakes and ends)."""
        with self.changed:
            self.closed = True
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone

    def _run(self) -> None:
        outcome: list[StatusRow] | BaseException | None
        try:
            outcome = self._rows()
        except BaseException as exc:  # raised in the caller's thread, as when asked there
            outcome = exc
        with self.changed:
            self.outcome = outcome
            self.done = True
            self.changed.notify_all()

    def _rows(self) -> list[StatusRow] | None:
        try:
            sock = connect(self.address, self.timeout)
        except (OSError, ValueError):
            return None
        with sock:
            with self.changed:
                if self.closed:
                    return None
                self.sock = sock
            try:
                return parse_status(
                    _reply(sock, "status", self.timeout, None).decode("utf-8", "surrogateescape")
                )
            except (OSError, ValueError, ProtocolError):
                return None
            finally:
                with self.changed:
                    self.sock = None


def server_metrics(address: str, *, timeout: float = 5.0) -> str:
    """A farm server's metrics in Prometheus' text format (admin command ``metrics``)."""
    reply = admin_query(address, "metrics", timeout=timeout)
    if not reply.endswith("\n.\n"):
        raise OSError(f"job server {address} did not answer `metrics`: {reply[:80]!r}")
    return reply[:-2]
