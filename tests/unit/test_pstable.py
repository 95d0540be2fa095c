"""`farm ps`'s look at workers' connections to remote servers (farm.pools.pstable)."""

from __future__ import annotations

import socket
from typing import Any

import psutil
import pytest

from farm.pools import pstable
from farm.pools.pstable import TcpSnapshot, remote_closed


def test_the_hosts_tcp_table_is_read_once_for_all_workers_of_one_ps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # psutil reads the kernel's whole table for one process as for all: per busy worker,
    # a remote-only farm's `farm ps` held the supervisor's loop for seconds.
    reads = []
    real = psutil.net_connections

    def counted(kind: str = "inet") -> Any:
        reads.append(kind)
        return real(kind)

    monkeypatch.setattr(pstable.psutil, "net_connections", counted)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            snapshot = TcpSnapshot()
            server = f"127.0.0.1:{port}"
            me = psutil.Process().pid
            assert not remote_closed(me, server, [server], snapshot)  # ours: established
            assert remote_closed(me, "127.0.0.1:1", ["127.0.0.1:1"], snapshot)  # none there
            assert not remote_closed(me, server, [server], snapshot)
    assert reads == ["tcp"]
