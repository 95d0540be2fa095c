"""Server addresses and sockets shared by the blocking client and worker."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterable

__all__ = [
    "DEFAULT_PORT",
    "parse_servers",
    "connect",
    "split_address",
    "recv",
    "tls_context",
    "tls_from_env",
    "Waker",
]

DEFAULT_PORT = 4730


def split_address(addr: str) -> tuple[str, int] | str:
    """("host", port) for TCP, or the socket path for "unix:/path". Raises ValueError."""
    addr = addr.strip()
    if not addr:
        raise ValueError("empty server address")
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise ValueError(f"server address {addr!r} names no socket path")
        return path
    if addr.startswith("["):  # [v6]:port
        host, _, rest = addr[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif addr.count(":") == 1:
        host, _, port_text = addr.partition(":")
    else:
        host, port_text = addr, ""
    if not port_text:
        return host, DEFAULT_PORT
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(f"server address {addr!r}: port must be a number from 1 to 65535")
    return host, port


def parse_servers(servers: str | Iterable[str] | None) -> list[str]:
    """Normalise a server list: "host:port", "host" (port 4730) or "unix:/path".

    None means $GEARMAN_SERVERS (comma-separated, libgearman's convention),
    else 127.0.0.1:4730.
    """
    if servers is None:
        servers = os.environ.get("GEARMAN_SERVERS") or f"127.0.0.1:{DEFAULT_PORT}"
    if isinstance(servers, str):
        items = [s for s in servers.split(",") if s.strip()]
    elif isinstance(servers, Iterable):
        items = list(servers)
    else:
        raise TypeError(
            f"servers must be a string or a list of strings, not {type(servers).__name__}"
        )
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"server address must be a string, not {type(item).__name__}")
        parsed = split_address(item)
        norm = f"unix:{parsed}" if isinstance(parsed, str) else _join(*parsed)
        if norm not in result:
            result.append(norm)
    if not result:
        raise ValueError("the server list is empty")
    return result


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """A client-side TLS context: verify the server against ``ca`` (or the system's CAs),
    and present ``cert``/``key`` when the server requires client certificates."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_from_env() -> ssl.SSLContext | None:
    """$FARM_TLS_CA, $FARM_TLS_CERT, $FARM_TLS_KEY, for the CLI's client and worker."""
    ca, cert = os.environ.get("FARM_TLS_CA"), os.environ.get("FARM_TLS_CERT")
    if not (ca or cert):
        return None
    return tls_context(ca, cert, os.environ.get("FARM_TLS_KEY"))


def recv(sock: socket.socket, size: int) -> bytes:
    """``sock.recv`` that also drains what TLS already decrypted: a selector cannot see
    bytes buffered inside the SSL object, so leaving them there would stall the reader."""
    data = sock.recv(size)
    if data and isinstance(sock, ssl.SSLSocket):
        while sock.pending():
            data += sock.recv(sock.pending())
    return data


def connect(addr: str, timeout: float, tls: ssl.SSLContext | None = None) -> socket.socket:
    """A connected, blocking socket with TCP_NODELAY (small packets must not wait).

    With ``tls``, TCP connections are wrapped in TLS (Unix sockets never are:
    file permissions protect them).
    """
    parsed = split_address(addr)
    if isinstance(parsed, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(parsed)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection(parsed, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=parsed[0])
            except BaseException:
                sock.close()
                raise
    sock.settimeout(None)
    return sock


class Waker:
    """A self-pipe: another thread (or a signal handler) wakes a selector loop.

    Register ``reader`` for reading; ``wake()`` never blocks (a full buffer
    means a wake-up is already pending); the loop calls ``drain()`` when woken.
    """

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # already full (a wake-up is pending) or closed

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()
