"""localhost's other address: the [::1] twin of a listener on 127.0.0.1 (or 0.0.0.0).

Where /etc/hosts names ``::1 localhost`` (Debian's, Ubuntu's), a client of ``localhost``
tries [::1] first: libgearman's default server (PHP's ``addServer()``, ``gearadmin``),
``farm submit --server localhost:P``, Prometheus or ``curl localhost:9730``. A farm that
listened on 127.0.0.1 alone left [::1] at its port to any local user, who then took those
clients' jobs, or served them fake metrics. So each of the farm's TCP listeners (the job
server's, its ``--metrics`` endpoint, the supervisor's ``[supervisor] metrics``) holds its
port on [::1] too, through this module: whether a listener needs its twin
(``twin_needed``), the twin's socket (``twin_socket``), and who holds [::1] at that port
when it is taken (``holder``), for the error that says what to do; and whose a loopback
listener is, when it is another user's (``another_users_listener``), for a client that found
another user's farm there, and a server that found its port taken.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any

from farm.logs import escape_controls

__all__ = [
    "TWINNED_HOSTS",
    "twin_needed",
    "twin_socket",
    "serve_twin",
    "holder",
    "taken_hint",
    "another_users_listener",
]

#: Hosts whose listener is given a twin on [::1]: localhost's IPv4 address, and every
#: address (gearmand's default, which holds [::] too). Another 127.x address is not
#: `localhost`, nor is a host name (``localhost`` itself is bound on every address it has).
TWINNED_HOSTS = frozenset({"127.0.0.1", "0.0.0.0"})
#: Listeners that hold [::1] at their port already (asyncio and farm bind [::] IPv6 only).
HOLDS_IPV6_LOOPBACK = frozenset({"::1", "::"})
#: What binding [::1] raises where the host has no IPv6: `localhost` is 127.0.0.1 alone.
NO_IPV6 = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


def twin_needed(host: str | None, port: int, listened: Iterable[tuple[str | None, int]]) -> bool:
    """Whether a listener on ``host:port`` (the port it got) needs its [::1] twin: it is on
    127.0.0.1 or 0.0.0.0, and none of the process's own ``listened`` (HOST, PORT) holds
    [::1] at that port. A listener on [::1] at another port leaves this one's free."""
    if host not in TWINNED_HOSTS:
        return False
    return not any(h in HOLDS_IPV6_LOOPBACK and p == port for h, p in listened)


def twin_socket(port: int, backlog: int) -> socket.socket | None:
    """A socket listening on [::1]:``port`` (blocking; asyncio makes its own non-blocking),
    or None where the host has no IPv6. Made here rather than by asyncio's create_server,
    which on a host without IPv6 returns a server with no socket at all (it skips the
    families it cannot make), and the log said "listening on [::1]" where nothing was.
    OSError when [::1]:``port`` cannot be bound otherwise (EADDRINUSE: ``holder`` names who
    has it)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in NO_IPV6:
            return None
        raise
    try:
        # A restart finds the last run's connections in TIME_WAIT, as on its own port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::1", port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno in NO_IPV6:
            return None
        raise
    return sock


def serve_twin(server: Any, port: int, name: str) -> Any:
    """The [::1]:``port`` twin of ``server`` (socketserver's, or wsgiref's WSGIServer),
    serving on a daemon thread named ``name``, shut down as ``server`` is; None where the
    host has no IPv6. OSError as ``twin_socket``."""
    sock = twin_socket(port, server.request_queue_size)
    if sock is None:
        return None
    twin = type(server)(("::1", port), server.RequestHandlerClass, False)
    twin.socket.close()  # the one the constructor made, unbound
    twin.socket = sock
    if hasattr(twin, "set_app"):  # WSGIServer: what its server_bind would have set up
        twin.server_name, twin.server_port = "localhost", port
        twin.setup_environ()
        twin.set_app(server.get_app())
    # A stop (shutdown()) waits for serve_forever's poll: the default half second delayed it.
    serve = functools.partial(twin.serve_forever, poll_interval=0.1)
    threading.Thread(target=serve, name=name, daemon=True).start()
    return twin


def taken_hint(port: int, whose: str, fix: str) -> str:
    """What to do when [::1]:``port`` is in use: who has it, what that means to ``whose``
    clients, and the fix (``fix``: the port hint of the listener it was to be held beside).
    Said in full, as a port taken on [::1] alone (a Node dev server: Node 17 and later
    bind localhost's [::1] only) is not what "another server has it?" brings to mind."""
    who = holder(port)
    return (
        (f"by {who}; " if who else "")
        + f"clients of `localhost:{port}` would reach it, not {whose}: stop"
        + (" it" if who else " what listens there")
        + f", or {fix}"
    )


def holder(port: int) -> str | None:
    """Who listens on [::1]:``port`` (or [::]), in words for an error ("node, pid 4242, user
    dev"), as far as this user may see; None when nothing is found there. Only when a twin
    could not be bound: psutil reads every process's descriptors."""
    import psutil  # a dependency; only imported here, where it is needed

    try:
        found = [
            conn
            for conn in psutil.net_connections(kind="tcp6")
            if conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.laddr.ip in HOLDS_IPV6_LOOPBACK
        ]
    except (OSError, psutil.Error):
        return None
    if not found:
        return None
    pid = found[0].pid
    if pid is None:  # its process is not this user's to read; its owner is in the table
        whose = another_users_listener("::1", port)
        return (
            f"a process of another user ({whose + '; ' if whose else ''}`sudo ss -ltnp` names it)"
        )
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name, user = proc.name(), proc.username()
    except (psutil.Error, KeyError):
        return f"pid {pid}"
    mine = user == _me()
    # Escaped: another user names their own process (prctl PR_SET_NAME: a newline and an
    # ESC in its 15 bytes forged a "farm: ready" line in the server's refusal).
    return f"{escape_controls(name)}, pid {pid}" + ("" if mine else f", user {user}")


def _me() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


#: The kernel's tables of TCP sockets, with each one's owner: readable by every user.
_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"


def another_users_listener(host: str, port: int) -> str | None:
    """Whose a listener on ``host``:``port`` (a loopback address, localhost, or a wildcard)
    is, in words ("uid 1001, alice"), when one is another user's; None when each is this
    user's, none is found, or there is no /proc to read. Read from the kernel's socket
    tables, which name every socket's owner to every user (psutil gives the pid of this
    user's processes only), and without a connect: a client about to use that port learns
    whose farm answers there before it sends anything."""
    uid = next((u for u in _listener_uids(host, port) if u != os.geteuid()), None)
    if uid is None:
        return None
    try:
        import pwd

        return f"uid {uid}, {pwd.getpwuid(uid).pw_name}"
    except KeyError:  # a uid the user database does not know
        return f"uid {uid}"


def _listener_uids(host: str, port: int) -> list[int]:
    """The owners of the listeners a client of ``host``:``port`` may reach, each once."""
    targets = _targets(host)
    uids: dict[int, None] = {}
    for table in _TCP_TABLES if targets else ():
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)  # the header
                for row in rows:
                    uid = _listening(row.split(), port, targets)
                    if uid is not None:
                        uids[uid] = None
        except OSError:
            continue
    return list(uids)


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _targets(host: str) -> tuple[_IP, ...]:
    """The addresses ``host`` stands for, where it is a loopback one or a wildcard (every
    address: a listener's, which any listener of its family is in the way of); none for any
    other host (never looked at). localhost is both loopback addresses."""
    if host in ("localhost", ""):
        return (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ()
    return (ip,) if ip.is_loopback or ip.is_unspecified else ()


def _reaches(listener: _IP, target: _IP) -> bool:
    """Whether a listener on ``listener`` takes (or is in the way of) ``target``: the same
    address or its IPv4-mapped form, a wildcard of its family (an IPv6 one, dual-stack, of
    IPv4's too), or, for a wildcard target, any listener of its family. Another loopback
    address (127.0.0.2) is not in the way of 127.0.0.1: any user may bind one."""
    mapped = getattr(listener, "ipv4_mapped", None)
    same_family = listener.version == target.version or (target.version == 4 and mapped)
    if target.is_unspecified:
        return bool(same_family) or listener.is_unspecified
    if listener == target or mapped == target:
        return True
    return listener.is_unspecified and (listener.version == target.version or listener.version == 6)


def _listening(fields: list[str], port: int, targets: tuple[_IP, ...]) -> int | None:
    """The owner of a socket table's row when it listens on ``port`` where a client of one of
    ``targets`` reaches it (``_reaches``), else None."""
    if len(fields) < 8 or fields[3] != _LISTEN:
        return None
    address, _, at = fields[1].partition(":")
    try:
        if int(at, 16) != port:
            return None
        # The kernel writes each 32-bit word of the address in the host's byte order.
        words = [bytes.fromhex(address[i : i + 8]) for i in range(0, len(address), 8)]
        ip = ipaddress.ip_address(
            b"".join(w[::-1] if sys.byteorder == "little" else w for w in words)
        )
        uid = int(fields[7])
    except ValueError:
        return None
    return uid if any(_reaches(ip, target) for target in targets) else None
