"""The control socket's listening side, in the supervisor's loop (farm.pools.control is
what a request and its reply are, and the client's side): ``ControlServer`` accepts, and
``ControlConnection`` reads one request and sends its reply, never blocking the loop.

What the loop must survive here, hours into a run: accept() failing for want of a
descriptor (EMFILE under ``LimitNOFILE``, ENFILE, ENOBUFS), and clients that connect and
say nothing. The first raised out of the loop and took the farm down ("cannot start: Too
many open files"); the second held a descriptor each, for ever, until the first came."""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import time
from typing import Any

from farm.errors import ConfigError, FarmError
from farm.logrepeats import Brief
from farm.paths import check_runtime_path, make_dirs
from farm.pools.control import (
    MAX_REQUEST,
    ControlUnavailable,
    SupervisorStopped,
    planted,
    request,
)
from farm.pools.places import control_place_error, refuse_non_socket
from farm.unixsocket import clear_socket_path

__all__ = [
    "ControlServer",
    "ControlConnection",
    "open_control",
    "SILENT_FOR",
    "MAX_WAITING",
    "PAUSE_AFTER",
]

log = logging.getLogger("farm.supervisor")

#: How long a connection may stay without a whole request line before it is closed: the CLI
#: sends its request as it connects, so one silent this long is stuck or not farm's.
SILENT_FOR = 10.0
#: At most this many connections wait for their request at once; one more closes the one
#: that has waited longest, so silent clients cannot hold the supervisor's descriptors.
MAX_WAITING = 16
#: How long the listener rests after accept() failed (no descriptor left, a kernel short of
#: buffers): the connection stays queued, and a listener read at once would spin the loop.
PAUSE_AFTER = 1.0
#: accept()'s failures that say nothing of the listener itself: the next may succeed.
_RETRIED = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


def open_control(path: str, source: str) -> ControlServer:
    """The control socket at ``[supervisor] control`` of the config read from ``source``; a
    path it cannot be made at (a directory it may not write, /proc) is the config's mistake:
    a ConfigError naming the file and the key (exit 2, which systemd does not restart)."""
    error = control_place_error(path, source)
    if error is not None:  # asked first: `farm check` asks the same, making nothing
        raise error
    try:
        return ControlServer(path, source)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(
            f"{source}: supervisor.control: cannot make the socket {path}: {why}; set it to"
            " a path in a directory the farm may write, e.g. /run/farm/control.sock"
        ) from None


class ControlServer:
    """The listening socket; refuses to steal a path another supervisor still answers on."""

    def __init__(self, path: str, source: str | None = None) -> None:
        self.path = path  # source: the config file that names it, for its refusals
        check_runtime_path(path)  # UnsafeDirectory (a FarmError): `farm up` stops, one line
        directory = os.path.dirname(path) or "."
        make_dirs(directory, 0o700)
        if os.path.lexists(path):
            refuse_non_socket(path, source)  # again: a file may have come since open_control asked
            if why := planted(path):  # not asked, nor replaced: its own, in a shared directory
                raise FarmError(f"not starting: {why}")
            try:
                pong = request(path, {"cmd": "ping"}, timeout=1.0)
            except SupervisorStopped as exc:  # Ctrl-Z'd in another terminal: it still runs
                raise FarmError(f"another supervisor is running: {exc}") from None
            except ControlUnavailable:
                try:
                    clear_socket_path(path)  # left by a supervisor that died; else it stays
                except OSError as exc:
                    raise FarmError(
                        f"another process answers at {path} (a busy supervisor?): {exc}"
                    ) from None
            else:
                pid = pong.get("pid")
                who = f" (pid {pid})" if isinstance(pid, int) else ""
                raise FarmError(f"another supervisor{who} is running: it answers at {path}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # no window in which others could connect
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(64)
        self.sock.setblocking(False)
        # Accepted connections not yet read whole, oldest first, each with its deadline.
        self.waiting: dict[ControlConnection, float] = {}
        self.paused_until: float | None = None  # accept() failed: the listener rests
        self._refused = Brief(log, every=60.0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> ControlConnection | None:
        """A connection, else None: none queued, or accept() failed, which pauses the
        listener (``paused_until``) and is said once a while, never raised: a farm under
        its descriptor limit serves on, and answers again once a descriptor is free."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in _RETRIED:  # that client gave up, or a firewall's say: not ours
                return None
            self.paused_until = time.monotonic() + PAUSE_AFTER
            self._refused(
                "control socket %s: cannot accept a connection (%s): `farm ps`, `farm stop`"
                " and the others wait; the farm runs on. Raise the descriptor limit"
                " (LimitNOFILE=, docs/operations.md)",
                self.path,
                exc.strerror or exc,
            )
            return None
        conn.setblocking(False)
        return ControlConnection(conn)

    def take(self, selector: selectors.BaseSelector) -> None:
        """The listener is readable: the connection accepted and registered to be read
        (its data itself), the longest waiting closed past ``MAX_WAITING``; or, where
        accept() failed, the listener taken out of ``selector`` until ``tend`` puts it back."""
        conn = self.accept()
        if self.paused_until is not None:
            selector.unregister(self)
            return
        if conn is None:
            return
        if len(self.waiting) >= MAX_WAITING:
            self._forget_answered()  # read since the last tend: not waiting, not dropped
        if len(self.waiting) >= MAX_WAITING:
            self._drop(selector, next(iter(self.waiting)))  # dicts keep their order
        self.waiting[conn] = time.monotonic() + SILENT_FOR
        selector.register(conn, selectors.EVENT_READ, conn)

    def tend(self, selector: selectors.BaseSelector, now: float) -> float:
        """A paused listener back in ``selector`` once its pause is over, and connections
        silent past ``SILENT_FOR`` closed; the seconds until the next of these is due."""
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            selector.register(self, selectors.EVENT_READ, "accept")
        self._forget_answered()
        for conn, until in list(self.waiting.items()):
            if now >= until:
                self._drop(selector, conn)
        due = [*self.waiting.values(), *([self.paused_until] if self.paused_until else [])]
        return max(0.0, min(due) - now) if due else PAUSE_AFTER * 60

    def _forget_answered(self) -> None:
        for conn in [c for c in self.waiting if c.asked or c.sock.fileno() < 0]:
            del self.waiting[conn]  # its request read; or gone, closed

    def _drop(self, selector: selectors.BaseSelector, conn: ControlConnection) -> None:
        del self.waiting[conn]
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):  # never registered, or closed by now
            pass
        conn.sock.close()

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ControlConnection:
    """One client: collects its request line, then gets one reply and is closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.asked = False  # a whole request line read: no longer one that waits

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> dict[str, Any] | None:
        """The request once a whole line is in; None while waiting. Raises EOFError if gone."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            raise EOFError
        self.buf += data
        if b"\n" not in self.buf:
            if len(self.buf) > MAX_REQUEST:
                raise EOFError
            return None
        self.asked = True
        try:
            message = json.loads(self.buf.partition(b"\n")[0])
        # RecursionError: arrays nested some thousands deep, which fit in MAX_REQUEST (a
        # traceback in the log, and "the supervisor failed it" for a line that is not a request)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            return {"cmd": None}
        return message

    def gone(self) -> bool:
        """Whether the client hung up after asking (a CLI that timed out waiting): a change
        it asked for is then not made, since nobody would learn of it."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def send(self, message: dict[str, Any]) -> bool:
        """One line of a reply that goes on (`farm stop` following the drain); the
        connection stays open. False, and closed, when the client stopped reading."""
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(0.2)
            self.sock.sendall(json.dumps(message).encode() + b"\n")
            return True
        except OSError:
            self.sock.close()
            return False

    def reply(self, message: dict[str, Any]) -> None:
        """Send the reply and close; a client that stopped reading is dropped."""
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass
        finally:
            self.sock.close()
