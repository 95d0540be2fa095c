"""``farm.Client.close()`` from another thread shuts the sockets of the thread inside down
(``Connections.cut_short``) under the lock that thread closes them under (``close_one``):
a socket closed between the two, its descriptor handed meanwhile to a file opened elsewhere,
would have that file shut down instead."""

from __future__ import annotations

import socket
import threading

import pytest

import farm.client.blockingconn
import farm.client.dialer
from farm.client.blockingconn import Conn, Connections
from farm.client.serverpick import ServerPicker

pytestmark = pytest.mark.timeout(30)


def held_elsewhere(lock: threading.RLock) -> bool:
    """Whether a thread other than a new one holds ``lock`` (RLock has no public test)."""
    taken: list[bool] = []

    def take() -> None:
        taken.append(lock.acquire(blocking=False))
        if taken[0]:
            lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    return taken == [False]


def test_another_threads_close_shuts_connections_down_under_the_connects_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cut_short shut the connections' sockets down after it had let the lock go.
    wire = Connections(ServerPicker(["127.0.0.1:1"]), 5.0, None)
    ours, peer = socket.socketpair()
    wire.conns["127.0.0.1:1"] = Conn("127.0.0.1:1", ours)
    seen: list[tuple[socket.socket, bool]] = []
    real = farm.client.dialer.shut

    def spy(sock: socket.socket) -> None:
        seen.append((sock, held_elsewhere(wire.dialer.lock)))
        real(sock)

    # Wherever it is called from (the module that imports it by name, or its own).
    monkeypatch.setattr(farm.client.blockingconn, "shut", spy, raising=False)
    monkeypatch.setattr(farm.client.dialer, "shut", spy)
    try:
        wire.cut_short()
        assert (ours, True) in seen, seen
        assert peer.recv(1) == b"", "the connection was not shut down"
    finally:
        ours.close()
        peer.close()
