"""Server addresses and sockets shared by the server, the clients, the worker and the CLI.

Every address farm reads (flags, farm.toml, $GEARMAN_SERVERS, API arguments)
goes through :func:`parse_address`: ``HOST:PORT``, ``[v6]:PORT``, a bare host
(port :data:`DEFAULT_PORT`) or ``unix:/path``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from farm.hostnames import host_problem
from farm.paths import MAX_SOCKET_PATH, socket_path_problem  # where the rule is written
from farm.sockio import (  # re-exported: where the callers and docs/architecture.md look
    READ_SIZE,
    TLS_SEND,
    recv,
    recv_now,
    send_now,
    sent_before,
)
from farm.tlsfiles import tls_context  # farm.net.tls_context, as docs/client.md names it

__all__ = [
    "tls_context",
    "DEFAULT_PORT",
    "DEFAULT_SERVER",
    "Address",
    "AddressError",
    "ImpossibleSocketPath",
    "SocketPathTooLong",
    "MAX_SOCKET_PATH",
    "socket_path_problem",
    "parse_address",
    "parse_port",
    "connectable",
    "dialable",
    "parse_servers",
    "connect",
    "Dial",
    "READ_SIZE",
    "TLS_SEND",
    "recv",
    "recv_now",
    "send_now",
    "sent_before",
    "KEEPALIVE",
    "handshake_silence",
    "TLSRefused",
    "tls_refused",
    "keep_alive",
]

#: Gearman's registered port: the one place farm writes it down.
DEFAULT_PORT: Final = 4730
#: Where clients and workers go when nothing names a server.
DEFAULT_SERVER: Final = f"127.0.0.1:{DEFAULT_PORT}"

_PORT_RULE: Final = "port must be a number from 1 to 65535"
# A listener on every interface is reached, from this host, through loopback.
_WILDCARD_TO_LOOPBACK: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class AddressError(ValueError):
    """An address that does not parse; ``address`` is the text, ``reason`` what is wrong."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"server address {address!r}: {reason}")
        self.address = address
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled or copied, made again from these, not from its message (farm.errors)
        return type(self), (self.address, self.reason), self.__dict__


class ImpossibleSocketPath(AddressError):
    """A ``unix:`` path no bind or connect can ever work with; its reason says the fix."""


class SocketPathTooLong(ImpossibleSocketPath):
    """A ``unix:`` path longer than any socket's."""


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address: TCP (``host``, ``port``) or a Unix socket (``path``).

    ``str()`` gives the normal form, which parses back to an equal Address.
    An empty ``host`` (and ``0.0.0.0``, ``::``) means every interface to a listener.
    """

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_port(text: str) -> int:
    """A TCP port from its decimal text; ValueError (naming the rule) otherwise."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(_PORT_RULE)
    return int(text)


def parse_address(text: str, default_port: int | None = DEFAULT_PORT) -> Address:
    """Parse ``HOST:PORT``, ``[v6]:PORT``, ``HOST``, ``v6`` or ``unix:/path``.

    A host without a port gets ``default_port``; with ``default_port=None`` the
    port is required. An IPv6 address takes brackets when a port follows it.
    Raises :class:`AddressError`.
    """
    if not isinstance(text, str):
        raise TypeError(f"server address must be a string, not {type(text).__name__}")
    addr = text.strip()
    if not addr:
        raise AddressError(text, "is empty")
    if addr.startswith("unix:"):
        if not addr[5:]:
            raise AddressError(text, "names no socket path (unix:/path)")
        if "\0" in addr:  # stat, bind and connect raise ValueError: a traceback
            why = f"{addr[5:]!r} holds a NUL character, which no socket path can"
            raise ImpossibleSocketPath(text, why)
        # Else `farm worker` (and farm.Worker) retried a connect that can never work.
        if too_long := socket_path_problem(addr[5:]):
            raise SocketPathTooLong(text, too_long)
        return Address("unix", path=addr[5:])
    if "://" in addr:  # gearman://h:1: read as an unbracketed IPv6 address, and refused so
        raise AddressError(text, f"is a URL; write HOST:PORT, e.g. {DEFAULT_SERVER}")
    if any(c.isspace() for c in addr):  # "a:1 b:2": two servers, one space for the comma
        raise AddressError(
            text, "holds a space; separate servers with commas (127.0.0.1:4730,127.0.0.1:4731)"
        )
    if addr.startswith("["):
        host, bracket, rest = addr[1:].partition("]")
        if not bracket:
            raise AddressError(text, "has '[' without ']'")
        if rest and not rest.startswith(":"):
            raise AddressError(text, "expected ':PORT' after ']'")
        if not _takes(ipaddress.IPv6Address, host):
            raise AddressError(text, f"{host!r} in brackets is not an IPv6 address")
        port_text: str | None = rest[1:] if rest else None
    elif addr.count(":") > 1:  # a bare IPv6 address: no port can follow it unbracketed
        if not _takes(ipaddress.IPv6Address, addr):
            raise AddressError(
                text, f"an IPv6 address with a port takes brackets: [::1]:{DEFAULT_PORT}"
            )
        host, port_text = addr, None
    else:
        host, colon, port = addr.partition(":")
        port_text = port if colon else None
        # Refused here, not at each connect: a..b, a label of 64 letters (farm.hostnames).
        if problem := host_problem(host):
            raise AddressError(text, problem)
    if port_text is None:
        if default_port is None:
            raise AddressError(text, "has no port")
        return Address("tcp", host=host, port=default_port)
    try:
        return Address("tcp", host=host, port=parse_port(port_text))
    except ValueError:
        raise AddressError(text, _PORT_RULE) from None


def _takes(convert: Callable[[str], object], host: str) -> bool:
    try:  # ipaddress's AddressValueError is a ValueError
        convert(host)
    except ValueError:
        return False
    return True


def connectable(addr: Address | str) -> Address:
    """Where to connect to reach a listener on ``addr``: wildcards become loopback."""
    parsed = addr if isinstance(addr, Address) else parse_address(addr)
    if parsed.kind == "tcp" and parsed.host in _WILDCARD_TO_LOOPBACK:
        return Address("tcp", host=_WILDCARD_TO_LOOPBACK[parsed.host], port=parsed.port)
    return parsed


def dialable(text: str, default_port: int | None = DEFAULT_PORT) -> Address:
    """``text`` as a server to connect to: with a host (``:4730``, every interface, named none)."""
    parsed = parse_address(text, default_port)
    if parsed.kind == "tcp" and not parsed.host:
        raise AddressError(text, f"names no host; write 127.0.0.1{text.strip()} for this one")
    return parsed


def parse_servers(servers: str | Iterable[str]) -> list[str]:
    """Normalise a server list (each as :func:`dialable` reads it), duplicates dropped.

    A string is comma-separated. Where to go given no list is farm.discovery's to say
    (``client_servers``: $FARM_SERVERS, $GEARMAN_SERVERS, the config), not this.
    """
    given: object = servers  # callers without types pass anything
    if isinstance(given, str):
        items: list[object] = [s for s in given.split(",") if s.strip()]
    elif isinstance(given, Iterable) and not isinstance(given, bytes | bytearray):
        items = list(given)  # bytes are iterable too, as ints: 'not int' said nothing
    else:
        raise TypeError(
            f"servers must be a string or a list of strings, not {type(given).__name__}"
        )
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"server address must be a string, not {type(item).__name__}")
        norm = str(dialable(item))
        if norm not in result:
            result.append(norm)
    if not result:
        raise ValueError("the server list is empty")
    return result


class Dial:
    """One ``connect`` (and TLS handshake) in a thread of its own, so that a loop serving
    other connections goes on while a server that does not answer takes ``timeout``:
    ``outcome`` stays None until it ends, then holds the socket or the OSError, ``took``
    the seconds it took, and ``wake`` is called. ``cancel`` closes a socket nobody will
    take."""

    def __init__(
        self, addr: str, timeout: float, tls: ssl.SSLContext | None, wake: Callable[[], None]
    ) -> None:
        self.outcome: socket.socket | OSError | None = None
        self.took = 0.0
        self._lock = threading.Lock()
        self._cancelled = False
        self._wake = wake
        threading.Thread(
            target=self._run, args=(addr, timeout, tls), name=f"farm-connect {addr}", daemon=True
        ).start()

    def _run(self, addr: str, timeout: float, tls: ssl.SSLContext | None) -> None:
        outcome: socket.socket | OSError
        began = time.monotonic()
        try:
            outcome = connect(addr, timeout, tls)
        except OSError as exc:
            outcome = exc
        except Exception as exc:  # an address parse_address refuses: the loop must hear of it too
            outcome = OSError(f"{type(exc).__name__}: {exc}")
        with self._lock:
            if self._cancelled:
                if isinstance(outcome, socket.socket):
                    outcome.close()
                return
            self.took = time.monotonic() - began  # before outcome: who sees one sees both
            self.outcome = outcome
        self._wake()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if isinstance(self.outcome, socket.socket):
                self.outcome.close()


def connect(
    addr: str | Address, timeout: float, tls: ssl.SSLContext | None = None
) -> socket.socket:
    """A connected, blocking socket with TCP_NODELAY (small packets must not wait).

    With ``tls``, TCP connections are wrapped in TLS (Unix sockets never are:
    file permissions protect them).
    """
    parsed = addr if isinstance(addr, Address) else parse_address(addr)
    if parsed.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(parsed.path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((parsed.host, parsed.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=parsed.host)
            except TimeoutError:
                sock.close()
                raise handshake_silence(parsed, timeout) from None
            except ssl.SSLError as exc:
                sock.close()
                raise tls_refused(exc) from exc
            except BaseException:
                sock.close()
                raise
    sock.settimeout(None)
    return sock


def handshake_silence(addr: Address, timeout: float | None) -> TimeoutError:
    """The error of a TLS handshake that timed out. The kernel took the connect, so a hung or
    stopped server's first silence is the handshake: ssl's own words ("_ssl.c:989: The
    handshake operation timed out") named neither the server nor what to suspect."""
    return TimeoutError(
        f"{addr} did not answer the TLS handshake within {timeout}s (hung or stopped?)"
    )


#: OpenSSL's reasons for a handshake with a peer that answered in the clear: a plain port.
_PLAIN_PEER = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG"}
)


class TLSRefused(ssl.SSLError):
    """A TLS handshake that failed, in the words of its fix (``tls_refused``); an
    ``ssl.SSLError`` still, with OpenSSL's ``reason`` and ``library``."""

    def __init__(self, words: str, reason: str = "", library: str = "") -> None:
        super().__init__(words)  # its message alone in args: pickled, it comes back whole
        self.words = words
        self.reason, self.library = reason, library

    def __str__(self) -> str:
        return self.words


def tls_refused(exc: ssl.SSLError) -> ssl.SSLError:
    """``exc`` of a handshake, worded where OpenSSL's own words name no cause: a server that
    does not speak TLS at that address ("[SSL: WRONG_VERSION_NUMBER] wrong version
    number"), and a certificate the CA given did not sign or that names another host
    ("certificate verify failed: unable to get local issuer certificate"); else as it is."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSRefused(
            f"its TLS certificate is not trusted ({exc.verify_message}): it must be signed by"
            " the CA the client was given ($FARM_TLS_CA, the tls context's) and name the"
            " host or address dialled",
            exc.reason or "",
            exc.library or "",
        )
    if exc.reason in _PLAIN_PEER:
        return TLSRefused(
            f"it does not speak TLS there ({exc.reason}): a plain Gearman port? dial its TLS"
            " address, or speak plain to it (no $FARM_TLS_CA, no tls context)",
            exc.reason or "",
            exc.library or "",
        )
    return exc


#: TCP keepalive: seconds idle before the first probe, seconds between probes, probes
#: unanswered before the kernel calls the peer gone. A peer whose host died or whose network
#: was cut sends no FIN nor RST: a worker asleep on such a server waited for ever, and a
#: server held such a worker's job as running for ever. Linux's defaults (two hours) are too
#: late; a hung but live host's kernel answers the probes, so they replace no deadline.
KEEPALIVE: tuple[int, int, int] = (60, 10, 3)


def keep_alive(sock: socket.socket, timers: tuple[int, int, int] | None = None) -> None:
    """Turn on TCP keepalive with ``timers`` (idle, interval, count; default ``KEEPALIVE``,
    read at each call); a Unix socket has no peer host to lose, and a refusal leaves the
    connection served all the same."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    names = ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")  # Linux's; elsewhere the OS's
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in zip(names, timers or KEEPALIVE, strict=True):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
