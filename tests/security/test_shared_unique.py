"""What a local user can make the server spend by giving one unique key to many jobs.

GET_STATUS_UNIQUE finds a job by its unique alone, in any function, so the server keeps
the live jobs of each unique together. They were a list: forgetting each one searched it,
and a TCP client that gave one unique to a job in each of 20,000 functions (any local
user may make up to --max-functions) held the server's loop, and with it the Executor's
calls, for 7 s when it closed, and for over a minute at 65,536.

So did one job that many connections joined: a connection that went made the server copy
the job's list of clients without it, and 2,000 connections of 100 submits of one unique
each (3 MB) held the loop for 8 s when they closed together."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest

from farm import protocol as p
from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers.servers import connect, start_farm_server
from tests.helpers.waiting import wait_for

JOBS = 20_000
#: Connections that join one job, and the submits of each.
JOINERS, JOINS = 2_000, 100


def _read_to_sync(sock: socket.socket) -> None:
    """Read the replies to what ``sock`` sent, up to the ECHO_RES of b"sync" sent last."""
    sock.settimeout(60)
    replies = b""
    while not replies.endswith(b"sync"):
        chunk = sock.recv(1 << 20)
        assert chunk, "the server closed the connection"
        replies += chunk


def _wait_tcp_peers_gone(unix_sock: str, what: str) -> None:
    """Until `workers` lists no TCP connection. It is answered in the loop that lets them
    go: the first listing without them comes after all that work."""
    wait_for(
        what,
        lambda: " 127.0.0.1 " not in admin_query(f"unix:{unix_sock}", "workers", timeout=60),
        60,
    )


@pytest.mark.serial  # times the server's loop: tests beside it would take their part
def test_jobs_sharing_one_unique_are_forgotten_in_linear_time(unix_sock: str) -> None:
    srv = start_farm_server(unix=unix_sock)
    try:
        hog = connect(srv.addr)
        submits = (p.encode_req(T.SUBMIT_JOB, b"f%d" % n, b"same", b"") for n in range(JOBS))
        hog.sendall(b"".join(submits) + p.encode_req(T.ECHO_REQ, b"sync"))
        _read_to_sync(hog)
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        assert " 127.0.0.1 " in admin_query(f"unix:{unix_sock}", "workers", timeout=60)
        started = time.monotonic()
        hog.shutdown(socket.SHUT_RDWR)  # its 20,000 jobs are dropped: nobody waits for them
        hog.close()
        _wait_tcp_peers_gone(unix_sock, "the hog's connection gone")
        took = time.monotonic() - started
        assert took < 3, f"the server's loop was held {took:.1f}s forgetting the jobs"
    finally:
        srv.stop()


@pytest.mark.serial  # times the server's loop: tests beside it would take their part
def test_connections_that_joined_one_job_are_let_go_in_linear_time(unix_sock: str) -> None:
    # JOINERS sockets here and as many in the server (which inherits the limit): past a
    # soft limit of 1,024 they failed with EMFILE, not with what is tested.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, JOINERS + 1024), hard), hard))
    srv = start_farm_server(unix=unix_sock)
    hogs: list[socket.socket] = []
    try:
        submits = p.encode_req(T.SUBMIT_JOB, b"f", b"same", b"") * JOINS
        for _ in range(JOINERS):
            hogs.append(connect(srv.addr))
            hogs[-1].sendall(submits + p.encode_req(T.ECHO_REQ, b"sync"))
        for hog in hogs:
            _read_to_sync(hog)
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        assert admin_query(f"unix:{unix_sock}", "status", timeout=60).startswith("f\t1\t")
        started = time.monotonic()
        for hog in hogs:
            hog.close()
        _wait_tcp_peers_gone(unix_sock, "every joiner gone")
        took = time.monotonic() - started
        assert took < 3, f"the server's loop was held {took:.1f}s letting the joiners go"
    finally:
        for hog in hogs:
            hog.close()
        srv.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
