"""The blocking client's connects, made so that ``close()`` can end them: from another
thread, or from a signal handler of the thread that connects.

A connect that nothing answers (a host that drops our SYNs) or a TLS handshake a server
leaves unanswered waits up to connect_timeout in the kernel, where no flag of ours is
looked at. ``shutdown()`` of the socket ends that wait at once (ECONNRESET, or EOF in the
handshake), so the socket being connected is kept where ``cut_short`` finds it. Only
shutdown crosses threads, never close: a descriptor closed under another thread may be
handed to a file opened meanwhile.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from farm.net import handshake_silence, keep_alive, parse_address, tls_refused

__all__ = ["Dialer", "shut"]


def shut(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways, which wakes whatever waits on it in any thread. The
    plain socket's method, also for a TLS socket: ``SSLSocket.shutdown`` drops its SSL
    object, which the thread using it may be inside."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # not connected yet (a Unix socket), or closed meanwhile
        pass


class Dialer:
    """The connects of one blocking client; ``cut_short`` ends the one under way, and
    every later one fails at once."""

    def __init__(self) -> None:
        # Reentrant: a signal handler's close comes in the thread that holds it.
        self.lock = threading.RLock()
        self.cut = False
        self._opening: socket.socket | None = None

    def cut_short(self, also: Iterable[socket.socket] = ()) -> None:
        """End the connect under way, and shut ``also`` down (the client's connections):
        under the lock their thread closes them under (``Connections.close_one``), or one
        closed meanwhile, its descriptor handed to a file opened elsewhere, shuts that."""
        with self.lock:
            self.cut = True
            for sock in (self._opening, *also):
                if sock is not None:
                    shut(sock)

    @contextmanager
    def _opening_now(self, sock: socket.socket) -> Iterator[None]:
        with self.lock:
            self._opening = sock
        try:
            # After it is in place: a cut before this saw nothing to shut down.
            if self.cut:
                raise OSError(errno.ECONNABORTED, "the client was closed")
            yield
        finally:
            with self.lock:
                self._opening = None

    def connect(
        self, addr: str, timeout: float | None, tls: ssl.SSLContext | None
    ) -> socket.socket:
        """A socket as ``farm.net.connect`` makes one (blocking, TCP_NODELAY, TLS over TCP
        when asked), with keepalive over TCP, which that one lacks: each address of the
        host tried in turn, ``timeout`` each, as it tries them."""
        parsed = parse_address(addr)
        if parsed.kind == "unix":
            return self._one(socket.AF_UNIX, 0, parsed.path, timeout)
        error: OSError | None = None
        for family, _, proto, _, sockaddr in socket.getaddrinfo(
            parsed.host, parsed.port, type=socket.SOCK_STREAM
        ):
            try:
                sock = self._one(family, proto, sockaddr, timeout)
                break
            except OSError as exc:
                if self.cut:
                    raise
                error = exc
        else:
            raise error or OSError(f"{parsed.host} has no address")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A server whose host died or whose network was cut sends no FIN nor RST: with
            # no keepalive a call to it waited for ever, as an idle worker did (farm.net).
            keep_alive(sock)
            if tls is not None:
                sock = tls.wrap_socket(
                    sock, server_hostname=parsed.host, do_handshake_on_connect=False
                )
                sock.settimeout(timeout)
                with self._opening_now(sock):
                    try:
                        sock.do_handshake()
                    except TimeoutError:
                        raise handshake_silence(parsed, timeout) from None
                    except ssl.SSLError as exc:
                        raise tls_refused(exc) from exc
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def _one(
        self, family: int, proto: int, sockaddr: str | tuple[Any, ...], timeout: float | None
    ) -> socket.socket:
        """A socket connected to ``sockaddr``, still with ``timeout`` set."""
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.settimeout(timeout)
            with self._opening_now(sock):
                sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        if family == socket.AF_UNIX:
            sock.settimeout(None)
        return sock
