"""The control socket's listener in a selector, as the supervisor's loop drives it."""

from __future__ import annotations

import selectors
import socket
import time
from pathlib import Path

from farm.pools.controlserver import SILENT_FOR, ControlConnection, ControlServer


def test_a_client_silent_past_its_time_is_closed_one_that_asked_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    server = ControlServer(path)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, "accept")
    silent, asking = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    try:
        for client in (silent, asking):
            client.connect(path)
            server.take(selector)
        asking.sendall(b'{"cmd": "ping"}\n')
        conns = [key.data for key in selector.get_map().values()]
        (asked,) = [c for c in conns if isinstance(c, ControlConnection) and c.read()]
        selector.unregister(asked)  # as the supervisor does with a request read
        now = time.monotonic()
        assert 0 < server.tend(selector, now) <= SILENT_FOR
        server.tend(selector, now + SILENT_FOR + 1)
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed by the supervisor: its descriptor freed
        assert asked.sock.fileno() >= 0  # its reply is still to come
        assert [key.data for key in selector.get_map().values()] == ["accept"]
    finally:
        silent.close()
        asking.close()
        server.close()
        selector.close()
