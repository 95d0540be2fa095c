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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import cast

from farm.server.connection import Connection, over_connections
from farm.server.hub import Hub

__all__ = ["TLSGate"]

log = logging.getLogger("farm.server")


class TLSGate(asyncio.Protocol):
    """A TCP connection just accepted (see the module docstring)."""

    def __init__(self, hub: Hub, context: ssl.SSLContext, factory: Callable[[], Connection]):
        self.hub = hub
        self.context = context
        self.factory = factory
        self.handshake: asyncio.Task[None] | None = None  # held: the loop keeps weak references

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's is not a subclass: its methods
        hub = self.hub
        if not hub.room(tcp=True):
            over_connections("connection limit reached; closing a TLS peer before its handshake")
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
        self.handshake = asyncio.ensure_future(self._handshake(sock))

    async def _handshake(self, sock: socket.socket) -> None:
        conn = self.factory()
        conn.tls_pending = True  # connection_made moves it from the handshakes to the peers
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=self.context
            )
        except Exception as exc:  # a failed or timed-out handshake, a peer that left
            log.debug("TLS handshake failed: %r", exc)
            sock.close()
        finally:
            if conn.tls_pending:
                conn.tls_pending = False
                self.hub.handshakes -= 1
