"""A look at an asyncio transport's socket that reads nothing (``peek``): what
``ServerConnection.closed_unseen`` (farm.client.aioconn) asks to see a close the loop has
not read yet."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["peek"]


def peek(transport: asyncio.BaseTransport, kind: tuple[int, int, int] | None) -> bytes | None:
    """A look at the socket under ``transport`` (of ``kind``: family, type, proto) that
    reads nothing: None when nothing waits to be read, b"" at the peer's end with nothing
    before it, else a byte of what waits (through TLS, of a record). asyncio's and uvloop's
    transports hand out a stand-in for the socket that has no recv(): a socket object is
    made on its descriptor for the look and detached after it (closed, it would close the
    transport's descriptor)."""
    sock = transport.get_extra_info("socket")
    if sock is None or kind is None:  # no socket to look at: as before, taken as open
        return None
    fd = sock.fileno()
    if fd < 0:  # closed under us
        return b""
    look = socket.socket(*kind, fileno=fd)
    try:
        return look.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:  # reset: the server's end too
        return b""
    finally:
        look.detach()
