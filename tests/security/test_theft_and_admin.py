"""Who may take the Executor's calls, and who may change the server through its admin port.

Anything on TCP 127.0.0.1 is reachable by every account on the host. Executor
calls (the reserved ``farm.*`` functions) carry code to run: only workers on
the Unix socket whose peer uid is trusted may register for them, so nobody
else even sees one. State-changing admin commands can be kept off TCP
(``--tcp-admin read-only``, what ``farm up`` runs) while read-only ones stay.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, connect, unix_farm_server
from tests.helpers.waiting import wait_for

NOBODY = 65534


@pytest.fixture
def server() -> Iterator[Server]:
    # A socket others may reach (pytest's own temp tree is closed to them), so that a
    # second local user can be tried.
    with unix_farm_server(
        "--tcp-admin", "read-only", "--unix-mode", "0o666", prefix="farm-security-", mode=0o755
    ) as srv:
        yield srv


def submit(peer: Peer, function: str, data: bytes) -> bytes:
    peer.send(T.SUBMIT_JOB_BG, function, "", data)
    return bytes(peer.expect(T.JOB_CREATED).args[0])


def test_a_tcp_worker_cannot_take_executor_calls(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    thief = peer_factory(server.addr)
    thief.send(T.CAN_DO, "farm.python")
    error = thief.expect(T.ERROR)
    assert error.args[0] == b"PERMISSION_DENIED" and b"over TCP" in error.args[1]
    thief.send(T.CAN_DO_TIMEOUT, "farm.python", "30")
    assert thief.expect(T.ERROR).args[0] == b"PERMISSION_DENIED"
    client = peer_factory(server.addr)
    handle = submit(client, "farm.python", b"signed call")
    thief.send(T.GRAB_JOB_UNIQ)
    assert thief.expect(T.NO_JOB).type == T.NO_JOB, "the call was not handed to it"
    # A worker of the server's own user on the Unix socket gets it.
    owner = peer_factory(f"unix:{server.unix}")
    owner.send(T.CAN_DO, "farm.python")
    owner.send(T.GRAB_JOB_UNIQ)
    assert owner.expect(T.JOB_ASSIGN_UNIQ).args[0] == handle
    # Functions outside farm.* are anyone's, as in gearmand.
    thief.send(T.CAN_DO, "reverse")
    submit(client, "reverse", b"abc")
    thief.send(T.GRAB_JOB_UNIQ)
    assert thief.expect(T.JOB_ASSIGN_UNIQ).args[1] == b"reverse"


def test_a_unix_worker_of_another_user_cannot_take_executor_calls(server: Server) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as a second local user (CI runs as root)")
    probe = f"""
import os, socket, sys
sys.path.insert(0, {str(ROOT)!r})
from farm import protocol as p
os.setgid({NOBODY}); os.setuid({NOBODY})
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({server.unix!r})
s.sendall(p.encode_req(p.PacketType.CAN_DO, b"farm.python"))
(pkt,) = p.Decoder(allow_admin=False).feed(s.recv(4096))
print(pkt.name, pkt.args[0].decode(), pkt.args[1].decode())
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out.startswith("ERROR PERMISSION_DENIED") and f"by uid {NOBODY}" in out, out


def admin(addr: str, line: str) -> str:
    with connect(addr) as sock:
        sock.sendall(line.encode() + b"\n")
        reply = b""
        while not (reply.endswith(b"\r\n") or reply.endswith(b".\n")):
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return reply.decode()


def test_state_changing_admin_commands_are_refused_over_tcp(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    handle = submit(peer_factory(server.addr), "victim", b"durable work").decode()
    local = f"unix:{server.unix}"
    for line in (f"cancel job {handle}", "maxqueue victim 1", "drop function victim"):
        assert admin(server.addr, line).startswith("ERR PERMISSION_DENIED"), line
    assert admin(server.addr, "create function x").startswith("ERR PERMISSION_DENIED")
    assert "victim\t1\t0\t0" in admin(server.addr, "status"), "read-only commands answer"
    assert handle in admin(server.addr, "show jobs")
    assert admin(local, f"cancel job {handle}") == "OK\r\n", "the Unix socket may"
    assert "victim\t0\t0\t0" in admin(server.addr, "status")


def test_maxqueue_of_a_bare_name_changes_state_and_is_refused_over_tcp(server: Server) -> None:
    # `maxqueue F` lifts F's limit and makes F: once it slipped past --tcp-admin read-only,
    # and any number of made-up names grew the server's function table for good.
    for line in ("maxqueue victim", "maxqueue " + "x" * 600):
        assert admin(server.addr, line).startswith("ERR PERMISSION_DENIED"), line
    local = f"unix:{server.unix}"
    assert admin(local, "maxqueue " + "x" * 600).startswith("ERR ARGUMENT_TOO_LARGE")
    assert admin(local, "create function " + "x" * 600).startswith("ERR ARGUMENT_TOO_LARGE")
    assert "x" * 600 not in admin(local, "status")


def test_admin_lines_whose_replies_are_not_read_cannot_fill_the_servers_memory(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # 200 functions of 500-byte names: a `status` reply of about 100 KB. Sixty such lines in
    # one send, never read, would make the server hold 6 MB; past 1 MiB unread it answers
    # the rest with a short ERR BUSY, and serves on.
    worker = peer_factory(server.addr)
    for i in range(200):
        worker.send(T.CAN_DO, f"{i:03d}" + "f" * 497)
    # The CAN_DOs come on another connection: wait until the server has read them all.
    status = wait_for("200 functions", lambda: (s := admin(server.addr, "status")) * ("199f" in s))
    with connect(server.addr) as greedy:
        greedy.sendall(b"status\n" * 60)
        received = b""
        while received.count(b"\n.\n") + received.count(b"ERR BUSY") < 60:
            chunk = greedy.recv(1 << 20)  # read only now: it answered what it will answer
            assert chunk, "the connection stays open"
            received += chunk
    answered = received.count(b"\n.\n")
    assert answered * len(status) < (1 << 20) + 2 * len(status), answered
    assert received.count(b"ERR BUSY") == 60 - answered > 0
    assert "199f" in admin(server.addr, "status")  # and the server serves on
    with connect(server.addr) as flood:  # blank lines are commands too: refusals pile up
        flood.sendall(b"status\n" * 12 + b"\n" * 200_000)
        total = 0
        while chunk := _recv_or_reset(flood):
            total += len(chunk)
        assert total < 2 * (1 << 20) + 2 * len(status), total  # cut off at twice the limit
    assert "199f" in admin(server.addr, "status")


def _recv_or_reset(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except ConnectionResetError:
        return b""


def test_farm_server_alone_keeps_gearmand_admin_by_default(
    farm_server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    handle = submit(peer_factory(farm_server.addr), "f", b"x").decode()
    assert admin(farm_server.addr, f"cancel job {handle}") == "OK\r\n"


def test_only_the_servers_own_user_may_name_functions_to_be_labelled(
    server: Server, peer_factory: Callable[[str], Peer]
) -> None:
    # `poolfunctions` (farm up's, for a pool a reload added) makes a function labelled by
    # name ahead of TCP workers' ones: from any local user it could crowd the farm's own
    # pools out of the 256 labels into function="other".
    submit(peer_factory(server.addr), "victim", b"work")
    queued = 'farm_jobs_queued{function="victim",priority="normal"} 1.0'
    local = f"unix:{server.unix}"
    assert queued not in admin_query(local, "metrics"), "no worker serves it: other"
    assert admin(server.addr, "poolfunctions victim").startswith("ERR PERMISSION_DENIED")
    if os.getuid() == 0:  # CI: the socket's other users are refused too
        probe = f"""
import os, socket
os.setgid({NOBODY}); os.setuid({NOBODY})
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({server.unix!r})
s.sendall(b"poolfunctions victim\\n")
print(s.recv(4096).decode())
"""
        run = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30
        )
        assert run.stdout.startswith("ERR PERMISSION_DENIED"), run.stdout + run.stderr
        assert "server's+user" in run.stdout, run.stdout
    assert queued not in admin_query(local, "metrics")
    assert admin(local, "poolfunctions victim") == "OK\r\n"
    assert queued in admin_query(local, "metrics")
    assert admin(local, "poolfunctions").startswith("ERR INVALID_ARGUMENTS")
