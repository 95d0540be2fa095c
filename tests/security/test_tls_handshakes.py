"""TLS handshakes count against --max-connections: any local user reaches the TCP port.

The listener's TLS (``ssl=``) ran each handshake before the server heard of the
connection, for up to a minute: peers that connected and sent nothing held descriptors
no limit counted, until the server had none left and the Unix socket's peers (the farm's
own workers and callers) were turned away (farm.server.tlsgate)."""

from __future__ import annotations

import asyncio
import resource
import shutil
import socket
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from farm.protocol import PacketType as T
from farm.server.app import Server as InProcessServer
from farm.server.options import parse_args
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, connect, free_port, start_farm_server
from tests.helpers.waiting import wait_for

#: The server's descriptors: fewer than the silent peers below, more than its limit's.
FDS = 200
SILENT = 300


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def tls_server(tmp_path: Path, unix: str) -> Server:
    cert, key = self_signed(tmp_path)
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


RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,  # the server's own
}


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_stop_ends_the_handshakes_in_flight(tmp_path: Path, runner: str) -> None:
    # A peer that connected and sent no ClientHello: its handshake went on after the stop
    # (up to the handshake's timeout, a minute), its descriptor open, its task left pending
    # for the loop's end, and a handshake that finished then made a connection to a server
    # that had stopped.
    cert, key = self_signed(tmp_path)
    port = free_port()
    args = ["--port", str(port), "--store", "none", "--tls-cert", str(cert), "--tls-key", str(key)]
    server = InProcessServer(parse_args(args))

    async def main() -> None:
        await server.start()
        hub = server.hub
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # and says nothing
        for _ in range(1000):  # the accept is the server's, in this loop: a few turns
            if hub.handshakes:
                break
            await asyncio.sleep(0.005)
        assert hub.handshakes == 1
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert others  # the handshake's
        server.stop()
        _, pending = await asyncio.wait(others, timeout=5)
        assert not pending, "handshakes still going after the stop"
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        assert hub.handshakes == 0
        writer.close()

    RUNNERS[runner](main())


class _Accepted:
    """A just-accepted peer's transport as TLSGate meets it: its socket and abort()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.aborted = sock, False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def abort(self) -> None:
        self.aborted = True
        self.sock.close()


def test_a_peer_accepted_as_the_server_stops_gets_no_handshake(tmp_path: Path) -> None:
    # Accepted before the stop closed the listener, its protocol told in the same turn
    # after the stop: it began a handshake no one cancelled, and made a connection to the
    # stopped server if that handshake finished.
    import ssl

    from farm.server.tlsgate import Handshakes, TLSGate

    server = InProcessServer(parse_args(["--store", "none"]))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed(tmp_path))

    async def main() -> None:
        handshakes = Handshakes()
        handshakes.cancel()  # what Server.stop does
        ours, theirs = socket.socketpair()
        with theirs:
            accepted = _Accepted(ours)
            gate = TLSGate(server.hub, context, lambda: None, handshakes)  # type: ignore[arg-type,return-value]
            gate.connection_made(accepted)  # type: ignore[arg-type]
            assert accepted.aborted and not handshakes.tasks and server.hub.handshakes == 0
            assert theirs.recv(1) == b""  # closed, not left to a handshake

    asyncio.run(main())
