"""Reads and sends on a connected socket: a whole read's size (``READ_SIZE``), ``recv``, and
the reads and sends that do not wait (``recv_now``, ``send_now``, what left before a send
failed: ``sent_before``), on a plain, TLS or green (gevent's, eventlet's) socket. farm.net
re-exports them, where their callers import them from."""

from __future__ import annotations

import _socket
import contextlib
import select
import socket
import ssl
from collections.abc import Iterator

__all__ = ["READ_SIZE", "TLS_SEND", "recv", "recv_now", "send_now", "sent_before"]

#: How much one read of a connection asks for. Not more: CPython allocates the whole size
#: for every read and shrinks it to what came, and glibc maps an allocation over 128 KiB
#: with mmap, so a 256 KiB read cost an mmap, an mremap and a munmap per packet read.
READ_SIZE = 65536
#: What one TLS send takes at most (a record): a send OpenSSL could not finish must be
#: retried with at least the same bytes, and the front of what waits stays put until then.
TLS_SEND = 16384


def recv(sock: socket.socket, size: int = READ_SIZE) -> bytes:
    """``sock.recv`` that also drains what TLS already decrypted: a selector cannot see
    bytes buffered inside the SSL object, so leaving them there would stall the reader."""
    data = sock.recv(size)
    if data and isinstance(sock, ssl.SSLSocket):
        while sock.pending():
            data += sock.recv(sock.pending())
    return data


def _readable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` has something to read (or an error, or EOF) now. poll, not select:
    select() refuses fds >= 1024, which a process with many open files hands out."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _green(sock: object) -> bool:
    """Whether ``sock`` is gevent's or eventlet's, once ``socket`` is monkey-patched."""
    return not isinstance(sock, _socket.socket)


@contextlib.contextmanager
def _not_waiting(sock: socket.socket) -> Iterator[None]:
    """A green socket (gevent's or eventlet's, once ``socket`` is monkey-patched) is not a
    ``_socket.socket`` and waits for its ``timeout`` where the system says EAGAIN, flags or
    none: MSG_DONTWAIT read a blocking one's next reply or none, for ever. Timeout 0 does not."""
    was = sock.gettimeout()
    sock.settimeout(0)
    try:
        yield
    finally:
        sock.settimeout(was)


def recv_now(sock: socket.socket) -> bytes:
    """What ``sock`` holds now (b"": the server closed it); BlockingIOError or, through
    TLS, SSLWantReadError when nothing has come."""
    if not isinstance(sock, ssl.SSLSocket):
        if _green(sock):
            with _not_waiting(sock):
                return sock.recv(READ_SIZE)
        return sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
    if not sock.pending() and not _readable_now(sock):
        # The common case, an idle connection: one system call, not three and an error.
        raise BlockingIOError
    sock.setblocking(False)  # ssl sockets take no flags
    try:
        return recv(sock)
    finally:
        sock.setblocking(True)


def send_now(sock: socket.socket, data: bytes | bytearray) -> int:
    """Send what ``sock`` takes without waiting; how many bytes it took. An OSError raised
    after some were taken (through TLS: a send of a record each) says how many
    (``sent_before``): a caller that counted none lost track of what had left, and took a
    request the server may have read for one never written."""
    if not isinstance(sock, ssl.SSLSocket):
        try:
            if _green(sock):
                with _not_waiting(sock):
                    return sock.send(data)
            return sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
    sent = 0
    sock.setblocking(False)  # ssl sockets take no flags
    try:
        with memoryview(data) as view:  # released before the caller resizes ``data``
            while sent < len(view):
                sent += sock.send(view[sent : sent + TLS_SEND])
    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
        pass
    except OSError as exc:
        exc.farm_sent = sent  # type: ignore[attr-defined]  # (sent_before)
        # Without the frames below: ssl's send() holds the slice of ``data`` it was given,
        # which would keep ``data`` (a caller's bytearray) from being resized while the
        # caller holds the error.
        raise exc.with_traceback(None)  # noqa: B904  # the same error, re-raised
    finally:
        sock.setblocking(True)
    return sent


def sent_before(exc: BaseException) -> int:
    """How many bytes ``send_now`` had sent before it raised ``exc``."""
    return int(getattr(exc, "farm_sent", 0))
