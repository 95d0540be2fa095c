"""TLS on the TCP listener, begun only for a connection the server has room for.

With ``ssl=`` on the listener, asyncio (and uvloop) accept a connection and run its
handshake before the protocol hears of it, and the handshake may take a minute: a
peer that connects and sends nothing holds a descriptor that ``--max-connections``
never counted. Any local user could so take every descriptor the server has, the
share kept for the Unix socket's peers (the farm's own workers and callers) with them.

Here the listener is plain TCP. A ``TLSGate`` hears of each connection as it is accepted,
before anything is read from it: past the limit it is closed at once, as any TCP peer;
else it counts (``Hub.handshakes``) and its socket is handed, unread, to
``loop.connect_accepted_socket`` with the TLS context, whose ``Connection`` takes the
count over once the handshake is done (``Connection.tls_pending``). (Upgrading the
transport with ``start_tls`` instead lost a ClientHello that came with the accept:
uvloop reads a new connection as soon as its protocol has heard of it.)

The server's stop cancels the handshakes in flight (``Handshakes``): a peer that sent no
ClientHello held its descriptor, and its task, for the handshake's timeout (a minute)
after the stop, and one that finished then made a connection to a stopped server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from farm.server.backpressure import over_connections
from farm.server.connection import Connection
from farm.server.hub import Hub
from farm.server.options import ServerOptions
from farm.tlsfiles import load_tls_file

__all__ = ["Handshakes", "TLSGate", "server_tls_context", "warn_of_dates", "warn_of_mode"]

log = logging.getLogger("farm.server")


class Handshakes:
    """The TLS handshakes in flight, one task each, held (the loop keeps only weak
    references to tasks) until they end, or until the server's stop cancels them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False  # the server stopped: a peer accepted in the same turn is closed

    def start(self, handshake: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(handshake)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def cancel(self) -> None:
        self.closed = True
        for task in self.tasks:
            task.cancel()

    async def wait_closed(self, limit: float) -> None:
        """Until every cancelled handshake has closed its socket, up to ``limit`` seconds."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=limit)


class TLSGate(asyncio.Protocol):
    """A TCP connection just accepted (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        context: ssl.SSLContext,
        factory: Callable[[], Connection],
        handshakes: Handshakes,
    ) -> None:
        self.hub = hub
        self.context = context
        self.factory = factory
        self.handshakes = handshakes

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's is not a subclass: its methods
        hub = self.hub
        if self.handshakes.closed:
            transport.abort()  # accepted before the stop closed the listener, made after it
            return
        if not hub.room(tcp=True):
            over_connections(
                "past --max-connections (%d; [server] max_connections, which the descriptor"
                " limit may have lowered: LimitNOFILE=, ulimit -n); closing a TLS peer before"
                " its handshake",
                hub.options.max_connections,
            )
            transport.abort()
            return
        try:
            # The same connection, on a descriptor of our own: the transport's goes with it.
            sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        except OSError as exc:  # out of descriptors: as a connection past the limit
            over_connections("cannot take a TLS peer: %s", exc)
            transport.abort()
            return
        transport.abort()  # closes its descriptor only: nothing was read, nothing is sent
        sock.setblocking(False)
        hub.handshakes += 1
        conn = self.factory()
        conn.tls_pending = True  # connection_made moves it from the handshakes to the peers
        handshake = self.handshakes.start(self._handshake(conn, sock))
        handshake.add_done_callback(lambda task: self._ended(task, conn, sock))

    async def _handshake(self, conn: Connection, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: conn, sock, ssl=self.context)

    def _ended(self, task: asyncio.Task[None], conn: Connection, sock: socket.socket) -> None:
        """A handshake's end, however it ended. Here, not in its coroutine: a task the stop
        cancels before its first turn runs no line of its coroutine."""
        if task.cancelled():  # the server stops
            sock.close()  # where a transport took it, it is detached: this closes nothing twice
        elif (exc := task.exception()) is not None:  # failed, timed out, the peer left
            log.debug("TLS handshake failed: %r", exc)
            sock.close()
        if conn.tls_pending:
            conn.tls_pending = False
            self.hub.handshakes -= 1


def server_tls_context(opts: ServerOptions) -> ssl.SSLContext | None:
    """The TLS listeners' context (--tls-cert, --tls-key; --tls-ca asks clients for a
    certificate it signed), or None without --tls-cert."""
    if not opts.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, key, ca = opts.tls_cert, opts.tls_key, opts.tls_ca

    def chain(path: str | None, key_path: str | None) -> None:
        ctx.load_cert_chain(str(path), key_path)
        warn_of_dates(cert, str(path), time.time())  # ``path``: where a pipe's copy lies

    load_tls_file("--tls-cert/--tls-key", cert, chain, key=key)
    warn_of_mode(key or cert)
    if ca:
        load_tls_file("--tls-ca", ca, lambda p, _: ctx.load_verify_locations(p))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


#: Days before its end from which a server certificate's coming expiry is warned of.
EXPIRY_NOTICE_DAYS = 7


def warn_of_dates(name: str, path: str, now: float) -> None:
    """A WARNING where the server's certificate (``name``, read at ``path``) has expired, is
    not valid yet, or ends within EXPIRY_NOTICE_DAYS: the server starts (as nginx's and
    gearmand's do), but every client refuses its handshake ("certificate has expired"),
    and certificates are read once, at start: a renewal takes a restart."""
    try:
        # The stdlib's one parser of a certificate file, private but there from 3.x on; a
        # Python without it, or a file it cannot parse (OpenSSL took it), says nothing.
        dates = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        begins = ssl.cert_time_to_seconds(dates["notBefore"])
        ends = ssl.cert_time_to_seconds(dates["notAfter"])
    except (AttributeError, KeyError, ValueError, ssl.SSLError, OSError):
        return
    if ends <= now:
        log.warning(
            "TLS certificate %s expired on %s: clients refuse its handshake; renew it and"
            " restart the server (certificates are read at start)",
            name,
            _utc(ends),
        )
    elif begins > now:
        log.warning(
            "TLS certificate %s is not valid until %s: clients refuse its handshake until"
            " then (is this host's clock right?)",
            name,
            _utc(begins),
        )
    elif ends - now < EXPIRY_NOTICE_DAYS * 86400:
        log.warning(
            "TLS certificate %s expires on %s (in %.1f days); renew it and restart the server"
            " (certificates are read at start)",
            name,
            _utc(ends),
            (ends - now) / 86400,
        )


def warn_of_mode(path: str) -> None:
    """A WARNING where the server's private key (``path``: --tls-key, or the certificate
    file that holds it) may be read by every user on the host, who could then pose as the
    server to its clients. Group-readable is left alone: Debian's keys are root:ssl-cert
    0640 by design. A pipe (a key kept off the disk) has no such mode."""
    try:
        info = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IROTH:
        log.warning(
            "TLS key %s may be read by every user on this host (mode %04o), who could pose as"
            " this server: chmod o-r %s",
            path,
            stat.S_IMODE(info.st_mode),
            path,
        )


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
