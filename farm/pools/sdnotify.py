"""systemd's notify protocol in the standard library: one datagram to $NOTIFY_SOCKET.

Used by the supervisor for READY=1, RELOADING=1, STOPPING=1, STATUS=, EXTEND_TIMEOUT_USEC and
WATCHDOG=1. Without $NOTIFY_SOCKET (not under systemd) every call is a no-op.
Children never see these variables (``child_environ``): only the main
process speaks for the service (NotifyAccess=main).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["notify", "child_environ", "restart_command", "Watchdog", "SYSTEMD_VARIABLES"]

SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def notify(*fields: str, environ: Mapping[str, str] = os.environ, wait: float = 1.0) -> bool:
    """Send ``fields`` (e.g. "READY=1", "STATUS=...") to systemd; False when not under it.

    A datagram socket whose reader lags blocks the sender once its queue is
    full, so the send waits at most ``wait`` seconds (0: drop it at once, for
    STATUS lines that the next one supersedes): the supervisor's loop must not hang.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(wait)
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError:
        return False  # systemd gone or socket unwritable: the service goes on
    return True


def child_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for child processes: ours without systemd's notify variables."""
    return {k: v for k, v in environ.items() if k not in SYSTEMD_VARIABLES}


def restart_command(environ: Mapping[str, str] = os.environ, cgroup: str | None = None) -> str:
    """How this farm is restarted, in the words its operator types: under systemd
    ``systemctl restart UNIT`` (a `farm stop; farm up` by hand left the farm running outside
    its unit), else ``farm stop; farm up``. systemd gives $INVOCATION_ID to each unit it
    starts ($NOTIFY_SOCKET alone is no proof: podman hands it to a container); the unit is
    read from this process's cgroup (``cgroup``: /proc/self/cgroup's text)."""
    if not environ.get("INVOCATION_ID"):
        return "farm stop; farm up"
    if cgroup is None:
        try:
            with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
                cgroup = f.read()
        except OSError:
            cgroup = ""
    for line in cgroup.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd"):  # cgroup v2's, or v1's systemd tree
            continue
        parts = path.split("/")
        # The unit, under a user's manager (user@1000.service) or the system's.
        units = [p for p in parts if p.endswith(".service") and not p.startswith("user@")]
        if units:
            user = " --user" if any(p.startswith("user@") for p in parts) else ""
            return f"systemctl{user} restart {units[-1].removesuffix('.service')}"
    return "systemctl restart the farm's service"


class Watchdog:
    """WATCHDOG=1 at half the interval systemd asked for ($WATCHDOG_USEC)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.interval: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval = int(usec) / 1e6 / 2
        self.last = 0.0

    def due_in(self, now: float) -> float | None:
        """Seconds until the next ping is due (None: no watchdog)."""
        return None if self.interval is None else max(0.0, self.last + self.interval - now)

    def ping(self, now: float | None = None) -> None:
        """Ping if due; the main loop calls this every turn, so a stuck loop stops pinging."""
        now = time.monotonic() if now is None else now
        if self.interval is not None and now - self.last >= self.interval:
            notify("WATCHDOG=1")
            self.last = now
