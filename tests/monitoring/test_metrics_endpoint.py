"""The job server's metrics endpoint (``--metrics HOST:PORT``) as an HTTP server any local
user can reach: its flag's checks, paths, and connections held open by someone who is not
Prometheus."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from farm.client.admin import admin_query
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, start_farm_server
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def test_metrics_needs_host_and_port() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "farm.server", "--metrics", "nowhere"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert run.returncode == 2 and "--metrics nowhere" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_unknown_path_is_404(peer_factory: Callable[[str], Peer]) -> None:
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert err.value.code == 404
        wait_for("the server to still answer", lambda: admin_query(srv.addr, "version"))
    finally:
        srv.stop()


def hold_open(port: int, count: int, held: list[socket.socket]) -> None:
    """``count`` connections to the endpoint, each with a request it never finishes."""
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /met")
        held.append(s)


def test_connections_to_the_endpoint_are_bounded() -> None:
    # Any local user can reach it: connections held open there (a request never finished)
    # took the descriptors kept for the Unix socket's callers. 32 at once; a 33rd takes the
    # place of the oldest one whose request is unfinished, which is closed.
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    held: list[socket.socket] = []
    try:
        hold_open(port, 32, held)
        hold_open(port, 1, held)
        held[0].settimeout(10)
        try:
            assert held[0].recv(100) == b"", "the oldest is closed at once"
        except ConnectionResetError:
            pass
        for s in held:
            s.close()
        url = f"http://127.0.0.1:{port}/metrics"

        def scraped() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    return b"farm_jobs_submitted_total" in reply.read()
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for("a scrape once the held ones are gone", scraped)
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_connections_reopened_at_once_do_not_keep_prometheus_out() -> None:
    """A local user holding all 32 places with requests never finished, and taking each
    back as it is dropped: a scrape gets in at once, not only past a second (one reopening
    them faster than once a second kept every scrape out)."""
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    held: list[socket.socket] = []
    try:
        hold_open(port, 32, held)
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(3):
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert b"farm_jobs_submitted_total" in reply.read()
            hold_open(port, 1, held)  # the place it took, taken back at once
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_connections_held_open_do_not_keep_prometheus_out() -> None:
    """A local user holding all 32 connections (each reopened as the server drops it) must not
    keep the scraper out: a new connection takes the place of the oldest one open for more
    than a second (a scrape takes milliseconds)."""
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    held: list[socket.socket] = []
    try:
        hold_open(port, 32, held)
        opened = time.monotonic()
        wait_for("the held ones to be over a second old", lambda: time.monotonic() - opened > 1.2)
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert b"farm_jobs_submitted_total" in reply.read()
        held[0].settimeout(10)
        try:
            assert held[0].recv(100) == b"", "the oldest held connection made room"
        except ConnectionResetError:
            pass
    finally:
        for s in held:
            s.close()
        srv.stop()


def raw_request(port: int, request: bytes) -> bytes:
    """What the endpoint answers ``request`` with, read to its close; less than the scrape
    timeout is waited (SCRAPE_TIMEOUT, 5 s): an answer that comes only then is none."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(request)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return reply


def test_lines_ended_by_a_bare_newline_and_a_head_too_large_are_answered() -> None:
    # `printf 'GET /metrics HTTP/1.0\n\n' | nc` (RFC 9112 lets a server take a bare LF, and
    # the supervisor's endpoint does): nothing came back, and the connection was cut at the
    # scrape timeout. A head past 64 KiB was closed with no answer at all.
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    try:
        reply = raw_request(port, b"GET /metrics HTTP/1.0\nHost: x\n\n")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:200]
        assert b"farm_jobs_submitted_total" in reply
        assert raw_request(port, b"GET / HTTP/1.0\n\n").startswith(b"HTTP/1.1 404 ")
        big = b"GET /metrics HTTP/1.1\r\nCookie: " + b"a" * 70_000 + b"\r\n\r\n"
        assert raw_request(port, big).startswith(b"HTTP/1.1 431 "), "said, not cut off"
        many = b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n"
        assert raw_request(port, many).startswith(b"HTTP/1.1 431 ")
        # blank lines before the request line are passed over, not without end
        assert raw_request(port, b"\r\n" * 40_000).startswith(b"HTTP/1.1 431 ")
        wait_for("the server to still answer", lambda: admin_query(srv.addr, "version"))
    finally:
        srv.stop()
