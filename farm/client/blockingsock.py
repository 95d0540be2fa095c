"""One server's socket of the blocking client (``Conn``): its session, what the socket has
not taken yet, how to word its close. ``farm.client.blockingconn`` holds them all."""

from __future__ import annotations

import selectors
import socket
import ssl

from farm.errors import ServerUnavailable
from farm.protocol.client import ClientSession, JobEnded
from farm.protocol.tasks import UNCONFIRMED, closed_unanswered

__all__ = ["Conn"]


class Conn:
    """One server's socket of a blocking client, with its ``ClientSession``, and the bytes
    the socket has not taken yet."""

    __slots__ = ("addr", "sock", "session", "answered", "unsent", "events")

    def __init__(self, addr: str, sock: socket.socket) -> None:
        self.addr = addr
        self.sock = sock
        self.session = ClientSession(addr)
        self.answered = False  # the server has said something on this connection
        self.unsent = bytearray()  # what the socket did not take yet, in order
        self.events = selectors.EVENT_READ  # what the selector waits for on it

    def why_closed(self) -> str:
        """How to word a close: a TLS server that refuses our certificate closes at once, and
        so does a TLS server spoken to in the clear."""
        return "went away" if self.answered else closed_unanswered(self.tls)

    @property
    def tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)

    def keep_unsent(self, data: bytes | bytearray, sent: int) -> None:
        """Of ``data`` (``unsent``, or new bytes), keep in ``unsent`` all but the first
        ``sent`` bytes, which left: what is there when the connection is lost tells a
        submit never written whole from one the server may have read (``connection_lost``
        of ``ClientSession``)."""
        if data is self.unsent:
            del self.unsent[:sent]  # from the front: CPython moves no bytes for it
        elif sent < len(data):
            self.unsent += memoryview(data)[sent:]

    def fail_tasks(self, why: str) -> None:
        """Fail the unfinished tasks of this connection, which the client closed itself (the
        server is as it was: a forked child's copy, one read out of step): ServerUnavailable
        naming the job and ``why``."""
        for task in self.session.connection_lost(by_server=False):
            task.error = ServerUnavailable(
                f"job {task.function} {task.handle or UNCONFIRMED} on {self.addr} {why}"
            )
            task.done = True
            if task.owner is not None:
                task.owner.task_event(JobEnded(task=task))
