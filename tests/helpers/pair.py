"""A server ``Connection`` with an in-memory transport, and the sans-I/O session at its
other end: the job server and its peers back to back, every byte moved by the test."""

from __future__ import annotations

from typing import Any

from farm.protocol.client import ClientSession
from farm.protocol.worker import WorkerSession
from farm.server.connection import Connection
from farm.server.hub import Hub


class MemoryTransport:
    """What a Connection writes, kept for the test to hand to the other side."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes) -> None:
        self.written += data

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Wire:
    """One server connection and the session at its other end."""

    def __init__(self, hub: Hub, session: ClientSession | WorkerSession) -> None:
        self.session = session
        self.transport = MemoryTransport()
        self.conn = Connection(hub)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]  # a stand-in

    def pump(self) -> list[object]:
        """Deliver what the session queued to the server, and the server's answer back."""
        out = self.session.data_to_send()
        if out:
            self.conn.data_received(out)
        return self.session.receive(self.transport.take())

    def drop(self) -> None:
        self.conn.connection_lost(None)
