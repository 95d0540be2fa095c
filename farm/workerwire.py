"""The worker's socket itself, below its links (farm.workerlinks): whether its server's end
has come (``peer_gone``), a wait for it to take bytes (``wait_writable``), and parting from a
server that assigned a job too large to take (``fail_and_part``)."""

from __future__ import annotations

import contextlib
import select
import socket

from farm.protocol import PacketType as T
from farm.protocol import encode_req

__all__ = ["fail_and_part", "peer_gone", "readable_now", "wait_writable"]

#: poll() events that say a peer is gone: its end of stream (Linux's POLLRDHUP, where
#: there is one) or a reset.
_PEER_GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def peer_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed or reset the connection, by poll() alone: nothing is
    read, so a TLS socket's records and a packet already here stay where they are."""
    poller = select.poll()
    poller.register(sock.fileno(), _PEER_GONE)
    return any(events & _PEER_GONE for _, events in poller.poll(0))


def readable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` holds bytes (or its end) to read this instant, without waiting
    (poll(): select() refuses a descriptor past 1,023, which a job's open files may push
    the worker's sockets to)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def wait_writable(sock: socket.socket, timeout: float) -> None:
    """Until ``sock`` takes bytes (or is gone: the send says so), ``timeout`` at most. The
    fd may be closed meanwhile by another thread: poll() says so (POLLNVAL) at once."""
    poller = select.poll()
    with contextlib.suppress(OSError, ValueError):  # closed already: fileno() is -1
        poller.register(sock.fileno(), select.POLLOUT)
        poller.poll(max(0, int(timeout * 1000) + 1))


def fail_and_part(sock: socket.socket, handle: bytes, why: str) -> None:
    """WORK_FAIL for a job assigned to us that we cannot take, after a WORK_WARNING saying
    ``why`` (the client's JobFailed quotes it: without it, it blamed the function's raising,
    which never ran), then a clean goodbye: our side shut, the rest of its packet read and
    dropped (bounded), so the server reads the WORK_FAIL before the end -- a close with bytes
    unread would reset the connection and lose it, and the job would come back to be refused
    again."""
    warning = encode_req(T.WORK_WARNING, handle, f"{why}\n".encode())  # a line, as a worker's
    with contextlib.suppress(OSError):
        sock.sendall(warning + encode_req(T.WORK_FAIL, handle))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5.0)
        while sock.recv(1 << 20):
            pass
