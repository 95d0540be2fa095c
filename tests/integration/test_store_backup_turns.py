"""The admin ``backup``'s copy is made in the store's writer thread, in turn with its
commits: the loop serves everyone else meanwhile, and the connection that asked gets its
reply before any other.

The server runs in this process (tests/helpers/storegate.py), so that a commit can be held
on an event: a backup asked for while it is held waits behind it, which is how these tests
see the loop's freedom without a store of hundreds of megabytes.
"""

from __future__ import annotations

import select
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.server.app import Server
from farm.version import __version__
from tests.helpers.peers import Peer
from tests.helpers.storegate import Gate, gated_server, readable
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Gate, Server]]:
    """A gated server's TCP and Unix addresses, its gate, and the server."""
    sock = tmp_path / "farm.sock"
    with gated_server(tmp_path, "--unix", str(sock)) as (addr, gate, server):
        yield addr, f"unix:{sock}", gate, server


@pytest.fixture
def gated(served: tuple[str, str, Gate, Server]) -> tuple[str, str, Gate]:
    """A gated server's TCP and Unix addresses and its gate."""
    return served[:3]


def on_loop(server: Server, act: Callable[[], None]) -> None:
    """Run ``act`` in the server's loop thread, in one turn, and wait for it."""
    done = threading.Event()
    loop = server.hub.loop
    assert loop is not None

    def turn() -> None:
        try:
            act()
        finally:
            done.set()

    loop.call_soon_threadsafe(turn)
    assert done.wait(10), "the loop did not take the turn"


def the_connection(server: Server) -> Any:
    """The one connection on the server's Unix socket."""
    (conn,) = [c for c in server.hub.connections if c.ip == "unix"]
    return conn


def held_commit(addr: str, gate: Gate) -> Peer:
    """A client whose background job's commit is held by ``gate`` (begun, not ended)."""
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "later", "", "x")
    gate.wait_entered()
    return client


def ask_backup(unix: str, tmp_path: Path, then: str = "") -> tuple[Peer, Path]:
    """A peer on the Unix socket that asked for a copy at tmp_path/copy.db, and ``then``
    more admin lines, in one write (one read: what follows the backup waits for it)."""
    asker = Peer(unix)
    copy = tmp_path / "copy.db"
    asker.send_raw(f"backup {copy}\n{then}".encode())
    return asker, copy


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(10)
    got = b""
    while data := sock.recv(65536):
        got += data
    return got


def jobs_in(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        db.close()


def test_the_loop_serves_on_while_a_backup_waits_and_its_reply_comes_first(
    gated: tuple[str, str, Gate], tmp_path: Path
) -> None:
    addr, unix, gate = gated
    client = held_commit(addr, gate)
    asker, copy = ask_backup(unix, tmp_path, "version\n")
    other = Peer(addr)
    other.send(T.ECHO_REQ, "served")  # a loop that waited for the copy would not answer
    assert other.expect(T.ECHO_RES).args == (b"served",)
    assert Peer(unix).admin("status").endswith(".\n")  # nor another admin on the socket
    assert not readable(asker), "a reply went out before the backup's"
    gate.let_one_go()
    client.expect(T.JOB_CREATED)
    reply = asker.sock.makefile("rb")
    asker.sock.settimeout(10)
    assert reply.readline() == f"OK 1 {copy.stat().st_size}\r\n".encode()
    assert reply.readline() == f"OK {__version__}\n".encode()
    assert jobs_in(copy) == 1  # the job whose commit was in flight when it was asked


def test_a_peer_that_half_closes_after_asking_still_gets_the_reply(
    gated: tuple[str, str, Gate], tmp_path: Path
) -> None:
    addr, unix, gate = gated
    held_commit(addr, gate)
    asker, copy = ask_backup(unix, tmp_path, "getpid\n")
    asker.sock.shutdown(socket.SHUT_WR)  # as `nc -N` does
    check = Peer(unix)
    assert check.admin("version").startswith("OK ")  # the half-close is read by now
    gate.let_one_go()
    lines = read_all(asker.sock).split(b"\n")
    assert lines[0].startswith(b"OK 1 ") and lines[1].startswith(b"OK "), lines
    assert copy.exists()


def test_a_peer_gone_before_the_reply_costs_nothing_else(
    gated: tuple[str, str, Gate], tmp_path: Path
) -> None:
    addr, unix, gate = gated
    held_commit(addr, gate)
    asker, copy = ask_backup(unix, tmp_path)
    asker.close()  # read before its end or after it: the copy is made, nobody told
    gate.let_one_go()
    wait_for("the copy made", copy.exists)
    assert jobs_in(copy) == 1
    assert Peer(unix).admin("version").startswith("OK ")


def test_a_turn_due_before_the_reply_was_owed_does_not_pass_it(
    served: tuple[str, str, Gate, Server], tmp_path: Path
) -> None:
    """A read sliced (its rest due in a later turn), then acted on whole in the same turn by
    a deadline's catch-up, which reached the backup: the turn due before must not act on
    what follows the backup (a worker's packets and a backup in one write)."""
    addr, unix, gate, server = served
    held_commit(addr, gate)
    asker = Peer(unix)
    asker.send(T.ECHO_REQ, "ready")
    asker.expect(T.ECHO_RES)
    conn = the_connection(server)
    echoes = conn.read_slice + 10
    copy = tmp_path / "copy.db"
    data = (
        p.encode_req(T.ECHO_REQ, b"e") * echoes
        + f"backup {copy}\n".encode()
        + p.encode_req(T.ECHO_REQ, b"after")
    )

    def read_then_deadline() -> None:
        conn.data_received(data)  # a slice now, the rest in a later turn
        assert conn.backlog is not None, "the read was not sliced"
        conn.catch_up()  # as a deadline does: all of it, up to the backup

    on_loop(server, read_then_deadline)
    echoed = p.encode_res(T.ECHO_RES, b"e") * echoes
    asker.sock.settimeout(10)
    got = b""
    while len(got) < len(echoed):
        got += asker.sock.recv(1 << 20)
    assert got == echoed
    on_loop(server, lambda: None)  # the turn that was due has run
    assert not select.select([asker.sock], [], [], 0.2)[0], "a reply passed the backup's"
    gate.let_one_go()
    reply = asker.sock.makefile("rb")
    assert reply.readline().startswith(b"OK 1 ")
    assert reply.read(len(p.encode_res(T.ECHO_RES, b"after"))) == p.encode_res(T.ECHO_RES, b"after")


def test_a_server_stopped_during_a_backup_sends_its_reply_first(
    served: tuple[str, str, Gate, Server], tmp_path: Path
) -> None:
    """SIGTERM while the copy is made: the server waits for it (its store's close does), and
    the reply and what the asker sent after it are answered before the connection closes."""
    addr, unix, gate, server = served
    held_commit(addr, gate)
    asker, copy = ask_backup(unix, tmp_path, "version\n")
    wait_for("the backup asked", lambda: any(c.answering for c in server.hub.connections))
    loop = server.hub.loop
    assert loop is not None
    loop.call_soon_threadsafe(server.stop)
    wait_for("the server stopping", lambda: server.jobs.stopping)
    gate.let_one_go()
    lines = read_all(asker.sock).split(b"\n")
    assert lines[0] == f"OK 1 {copy.stat().st_size}\r".encode(), lines
    assert lines[1] == f"OK {__version__}".encode(), lines
