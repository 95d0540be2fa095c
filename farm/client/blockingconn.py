"""The blocking Client's parts of one connection: the socket with its ``ClientSession``
(``Conn``), and the listener that hands a call's progress to its callbacks."""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Callable
from typing import Any

from farm.protocol.client import ClientSession, JobData, JobProgress, JobWarning, TaskEvent

__all__ = ["Callbacks", "Conn"]


class Callbacks:
    """The listener of a ``call`` with progress callbacks: each event to its callback."""

    __slots__ = ("on_status", "on_data", "on_warning")

    def __init__(
        self,
        on_status: Callable[[int, int], Any] | None,
        on_data: Callable[[bytes], Any] | None,
        on_warning: Callable[[bytes], Any] | None,
    ) -> None:
        self.on_status = on_status
        self.on_data = on_data
        self.on_warning = on_warning

    def task_event(self, event: TaskEvent) -> None:
        if type(event) is JobProgress:
            if self.on_status:
                self.on_status(event.numerator, event.denominator)
        elif type(event) is JobData:
            if self.on_data:
                self.on_data(event.data)
        elif type(event) is JobWarning and self.on_warning:
            self.on_warning(event.data)


class Conn:
    __slots__ = ("addr", "sock", "session", "answered")

    def __init__(self, addr: str, sock: socket.socket) -> None:
        self.addr = addr
        self.sock = sock
        self.session = ClientSession(addr)
        self.answered = False  # the server has said something on this connection

    def why_closed(self) -> str:
        """How to word a close: a TLS server that refuses our certificate closes at once."""
        if isinstance(self.sock, ssl.SSLSocket) and not self.answered:
            return (
                "closed the TLS connection before answering (a server that requires client"
                " certificates does so when ours is missing or not trusted: FARM_TLS_CERT)"
            )
        return "went away"

    def went_away(self) -> bool:
        """An idle connection the server closed (e.g. it restarted since our last job)."""
        if isinstance(self.sock, ssl.SSLSocket):
            # No MSG_PEEK through TLS; an idle server has nothing to say unless it is leaving.
            return bool(select.select([self.sock], [], [], 0)[0])
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
