"""Which job server to try, in what order: one rule for every client face.

A job with a unique key always starts at the same server (so retries and
joiners meet the same queue); others rotate. A server that refused or dropped
a connection is tried last for ``DOWN_FOR`` seconds.
"""

from __future__ import annotations

import time
import zlib

__all__ = ["DOWN_FOR", "ServerPicker"]

#: A server that refused a connection is tried last for this long (seconds).
DOWN_FOR = 2.0


class ServerPicker:
    """Orders ``servers`` for one attempt; remembers which ones recently failed."""

    def __init__(self, servers: list[str]) -> None:
        self.servers = servers
        self._down_until: dict[str, float] = {}
        self._rotation = 0

    def order(self, unique: str = "", exclude: str | None = None) -> list[str]:
        """Servers in the order to try: a stable start per unique key, live ones first."""
        servers = self.servers
        if unique:
            start = zlib.crc32(unique.encode()) % len(servers)
        else:
            start = self._rotation % len(servers)
            self._rotation += 1
        order = [a for a in servers[start:] + servers[:start] if a != exclude]
        now = time.monotonic()
        return sorted(order, key=lambda a: self._down_until.get(a, 0) > now)  # stable sort

    def mark_down(self, addr: str) -> None:
        self._down_until[addr] = time.monotonic() + DOWN_FOR

    def mark_up(self, addr: str) -> None:
        self._down_until.pop(addr, None)
