"""TLS handshakes count against --max-connections: any local user reaches the TCP port.

The listener's TLS (``ssl=``) ran each handshake before the server heard of the
connection, for up to a minute: peers that connected and sent nothing held descriptors
no limit counted, until the server had none left and the Unix socket's peers (the farm's
own workers and callers) were turned away (farm.server.tlsgate)."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, connect, start_farm_server
from tests.helpers.waiting import wait_for

#: The server's descriptors: fewer than the silent peers below, more than its limit's.
FDS = 200
SILENT = 300


def tls_server(tmp_path: Path, unix: str) -> Server:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FDS, hard), hard))  # the server's, inherited
    try:
        return start_farm_server(
            "--max-connections", "100", "--tls-cert", str(cert), "--tls-key", str(key), unix=unix
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def test_peers_that_never_finish_a_handshake_cannot_take_the_unix_sockets_connections(
    tmp_path: Path, unix_sock: str
) -> None:
    srv = tls_server(tmp_path, unix_sock)
    silent: list[socket.socket] = []
    try:
        wait_for("the Unix socket", lambda: Path(unix_sock).exists())
        silent = [connect(srv.addr) for _ in range(SILENT)]  # no ClientHello, ever
        for s in silent:
            s.setblocking(False)
        # 90 TCP peers at most (the last tenth is the Unix socket's): the others are closed
        # at once, as plain TCP's are, not left to hold a descriptor for a minute.
        wait_for(
            "the peers past the limit closed",
            lambda: sum(closed(s) for s in silent) >= SILENT - 90,
            timeout=20,
        )
        local = Peer(f"unix:{unix_sock}")
        local.send(T.ECHO_REQ, "mine")
        assert local.expect(T.ECHO_RES).args == (b"mine",)
    finally:
        for s in silent:
            s.close()
        srv.stop()
