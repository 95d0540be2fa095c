"""TCP keepalive on the callers' connections: farm.Client, farm.AsyncClient and
farm.Executor. A server whose host died or whose network was cut sends no FIN nor RST; with
no keepalive a call to it waited for ever (an AsyncClient call was still pending 130 s after
its server's path was blackholed, where an idle worker gave up after 88 s). The timers are
farm.net's (``KEEPALIVE``), set here to values no kernel has by default, so that the test
sees the client's own. Over TLS too, where the client's socket is wrapped."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from farm import net
from farm.net import tls_context
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.servers import Server
from tests.helpers.tlspki import pki, tls_server
from tests.helpers.unreachable import in_namespace, namespaces_usable
from tests.helpers.waiting import wait_for

__all__ = ["pki", "tls_server"]  # fixtures, imported for pytest to find
TIMERS = (7, 3, 4)


@pytest.fixture(autouse=True)
def _timers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "KEEPALIVE", TIMERS)


def _options(sock: socket.socket) -> tuple[int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


def _to_server(port: int) -> list[tuple[int, int, int, int]]:
    """The keepalive options of each of this process's TCP sockets connected to ``port``
    on 127.0.0.1 (the server is a process of its own: these are the caller's ends)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:  # closed since the listing
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket: its copy closed, or each look doubled the process's
            os.close(fd)  # descriptors, and a later test's select() met one past 1023
            continue
        with sock:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            try:
                if sock.getpeername() != ("127.0.0.1", port):
                    continue
            except OSError:  # not connected
                continue
            found.append(_options(sock))
    return found


@pytest.fixture(params=["plain", "tls"])
def server(request: pytest.FixtureRequest) -> tuple[Server, ssl.SSLContext | None]:
    """A farm server over plain TCP, or over TLS with the context that trusts it."""
    if request.param == "plain":
        return request.getfixturevalue("farm_server"), None
    ca = request.getfixturevalue("pki") / "ca.pem"
    return request.getfixturevalue("tls_server"), tls_context(ca=str(ca))


def test_a_client_s_tcp_connection_has_keepalive(
    server: tuple[Server, ssl.SSLContext | None],
) -> None:
    srv, tls = server
    with farm.Client(srv.addr, tls=tls) as client:
        assert client.echo(b"ping") == b"ping"
        assert _to_server(srv.port) == [(1, *TIMERS)]


def test_an_async_client_s_tcp_connection_has_keepalive(
    server: tuple[Server, ssl.SSLContext | None],
) -> None:
    srv, tls = server

    async def main() -> list[tuple[int, int, int, int]]:
        async with farm.AsyncClient(srv.addr, tls=tls) as client:
            assert await client.echo(b"ping") == b"ping"
            return _to_server(srv.port)

    assert asyncio.run(main()) == [(1, *TIMERS)]


@pytest.fixture
def executor_farm(tmp_path: Path) -> Iterator[ExecutorFarm]:
    made = ExecutorFarm(tmp_path, count=1)
    yield made
    made.stop()


def test_an_executor_s_tcp_connection_has_keepalive(executor_farm: ExecutorFarm) -> None:
    # max_workers given: no admin connection asks the server for the pool's size.
    with executor_farm.executor(max_workers=1) as ex:
        assert ex.submit(pow, 2, 3).result(timeout=30) == 8
        # The pump's connect ran in a thread of its own (net.Dial); it is open once the
        # call's answer came back on it.
        found = wait_for("the pump's connection", lambda: _to_server(executor_farm.server.port))
        assert found == [(1, *TIMERS)]


@pytest.mark.timeout(90)
@pytest.mark.skipif(not namespaces_usable(), reason="needs root and a network namespace")
def test_an_async_call_to_a_server_whose_host_is_gone_fails() -> None:
    # The job is held by a worker; then every packet between the client and the server is
    # dropped, as when the server's host dies: no FIN nor RST. With no keepalive the call
    # waited for ever (a review's: still pending 130 s after). With farm.net's timers cut
    # to seconds (1, 1, 2) it fails in about 3 s, as the connection is lost.
    run = in_namespace("client")
    assert run.returncode == 0, run.stdout + run.stderr
    said = run.stdout.split()
    assert said[:1] == ["noticed"] and said[2:] == ["ServerUnavailable"], run.stdout + run.stderr
