"""A scraper that asks for the metrics and never reads the reply is dropped, not kept.

Any local user can reach the server's ``--metrics`` port. A reply larger than the socket
buffers (a server with many functions: megabytes) stays in the server's memory while the
client does not read it; past the scrape timeout the connection is aborted, since a
close would wait for the reply to leave, that is for ever, and hold its memory and
one of the endpoint's few connections all that time.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable

import psutil
import pytest

from farm.protocol import PacketType as T
from farm.slowreuse import SCRAPE_TIMEOUT
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, start_farm_server
from tests.helpers.waiting import wait_for


def connections_to(pid: int, port: int) -> int:
    """The server's TCP connections on its metrics port that are still open."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.timeout(60)
def test_a_scraper_that_never_reads_its_reply_is_dropped(
    peer_factory: Callable[[str], Peer],
) -> None:
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    try:
        worker = peer_factory(srv.addr)
        for i in range(200):  # long names: a reply of megabytes, more than any socket holds
            worker.send(T.CAN_DO, f"{i:04d}" + "f" * 500)
        worker.send(T.ECHO_REQ, "ready")
        worker.expect(T.ECHO_RES)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            whole = len(reply.read())
        assert whole > 4 * 1024 * 1024
        wait_for("the scrape's connection to go", lambda: connections_to(srv.proc.pid, port) == 0)

        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # Counted once the server has accepted it (until then it waits in the listen queue,
        # which is no socket of the server's: on a loaded machine, an assert here failed).
        wait_for("the server to take the scraper", lambda: connections_to(srv.proc.pid, port) == 1)
        wait_for(
            "the server to drop a scraper that reads nothing",
            lambda: connections_to(srv.proc.pid, port) == 0,
            timeout=SCRAPE_TIMEOUT + 10,
        )
        # What the kernel had taken before the abort is all that comes: not the reply.
        slow.settimeout(10)
        got = 0
        try:
            while chunk := slow.recv(1 << 16):
                got += len(chunk)
        except ConnectionResetError:
            pass
        slow.close()
        assert got < whole
    finally:
        srv.stop()
