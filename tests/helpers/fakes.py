"""Stand-ins for what the job model talks to, for tests that drive it without sockets."""

from __future__ import annotations


class FakePeer:
    """A connection as farm.server.queues.Peer sees it; records what it was sent."""

    def __init__(self) -> None:
        self.abilities: dict[bytes, float] = {}
        self.running: dict = {}
        self.attached: set = set()
        self.exceptions = False
        self.sleeping = False
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)
