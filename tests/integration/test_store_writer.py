"""The store's commits leave the event loop: a commit that takes long (a checkpoint's fsync, a
flood of another user's background jobs) delays no one else, and still nothing a client is
told gets ahead of the commit it waits for.

The server runs in this process, in a thread of its own, so that its store's writes can be
held on an event (``Gate``, tests/helpers/storegate.py): a real loop, real sockets, a real SQLite
file.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.storegate import Gate, gated_server, readable
from tests.helpers.waiting import wait_for


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[str, Gate]]:
    """A gated server (``gated_server``): its address and its gate."""
    with gated_server(tmp_path) as (addr, gate, _):
        yield addr, gate


def test_a_foreground_job_completes_while_a_commit_is_held(gated: tuple[str, Gate]) -> None:
    addr, gate = gated
    flooder = Peer(addr)  # another local user's background job, and what it asks after it
    flooder.send(T.SUBMIT_JOB_BG, "bg", "", "x" * 2000)
    flooder.send(T.ECHO_REQ, "after")
    gate.wait_entered()  # its commit has begun, and does not end
    worker = Peer(addr)
    worker.send(T.CAN_DO, "echo")
    bg_worker = Peer(addr)
    bg_worker.send(T.CAN_DO, "bg")
    bg_worker.send(T.GRAB_JOB)
    bg_worker.expect(T.NO_JOB)  # not handed out before its row is on disk
    bg_worker.send(T.PRE_SLEEP)
    caller = Peer(addr)  # the owner's call (the Executor's are foreground, never stored)
    caller.send(T.SUBMIT_JOB, "echo", "", "ping")
    handle = caller.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    assign = worker.expect(T.JOB_ASSIGN)
    assert assign.args[0] == handle
    worker.send(T.WORK_COMPLETE, handle, "pong")
    assert caller.expect(T.WORK_COMPLETE).args == (handle, b"pong")
    # Everything above went through the loop after the flooder's packets: its replies
    # would be in its socket by now were they not held for the commit.
    assert not readable(flooder), "a reply went out before its job was committed"
    assert not readable(bg_worker)
    gate.let_one_go()
    created = flooder.expect(T.JOB_CREATED).args[0]
    assert flooder.expect(T.ECHO_RES).args == (b"after",)  # still behind it
    bg_worker.expect(T.NOOP)  # committed: now it is queued, and its worker woken
    bg_worker.send(T.GRAB_JOB)
    assert bg_worker.expect(T.JOB_ASSIGN).args[0] == created


def test_replies_wait_for_the_commit_of_their_own_batch(gated: tuple[str, Gate]) -> None:
    addr, gate = gated
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "bg", "one", "x")
    gate.wait_entered()  # the first batch is being written
    client.send(T.SUBMIT_JOB_BG, "bg", "two", "x")  # staged for the next batch meanwhile
    client.send(T.ECHO_REQ, "after two")
    check = Peer(addr)
    check.send(T.ECHO_REQ, "turn")  # the loop has read the client's packets before this
    check.expect(T.ECHO_RES)
    assert not readable(client)
    gate.let_one_go()
    first = client.expect(T.JOB_CREATED).args[0]
    gate.wait_entered()  # the second batch is being written: the first is released
    assert not readable(client), "a reply of the second batch left before its commit"
    gate.let_one_go()
    second = client.expect(T.JOB_CREATED).args[0]
    assert second != first
    assert client.expect(T.ECHO_RES).args == (b"after two",)


def test_a_failed_commit_refuses_in_place_and_in_order(gated: tuple[str, Gate]) -> None:
    addr, gate = gated
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "bg", "one", "x")
    gate.wait_entered()
    client.send(T.SUBMIT_JOB_BG, "bg", "two", "x")  # staged while the first is written
    client.send(T.ECHO_REQ, "after")
    check = Peer(addr)
    check.send(T.ECHO_REQ, "turn")
    check.expect(T.ECHO_RES)
    gate.failing = True
    gate.let_one_go()
    # The first batch failed; the second is refused unwritten while the store fails.
    for _ in range(2):
        refusal = client.expect(T.ERROR)
        assert refusal.args[0] == b"QUEUE_ERROR" and b"cannot be written" in refusal.args[1]
    assert client.expect(T.ECHO_RES).args == (b"after",)
    assert "bg\t0\t0\t0" in check.admin("status")  # neither is queued


def test_a_submit_joining_a_refused_job_is_refused_behind_a_newer_one(
    gated: tuple[str, Gate],
) -> None:
    addr, gate = gated
    first = Peer(addr)
    first.send(T.SUBMIT_JOB_BG, "bg", "old", "x")
    gate.wait_entered()  # "old" is being written (and will fail)
    second = Peer(addr)
    second.send(T.SUBMIT_JOB_BG, "bg", "new", "x")  # the next batch
    second.send(T.SUBMIT_JOB_BG, "bg", "old", "x")  # joins "old": its row is in the first
    check = Peer(addr)
    check.send(T.ECHO_REQ, "turn")
    check.expect(T.ECHO_RES)
    gate.store.retry_after = 0.0  # a failed write is tried again at the next commit
    gate.failing = True
    gate.let_one_go()
    assert first.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
    gate.wait_entered()  # the store is tried again at once (retry_after 0): "new"
    gate.failing = False
    gate.let_one_go()
    second.expect(T.JOB_CREATED)
    # Told in its place, after the reply it waited behind: not a handle of a forgotten job.
    assert second.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
    assert "bg\t1\t0\t0" in check.admin("status")


def test_a_connection_closed_by_the_server_gets_its_held_replies_first(
    gated: tuple[str, Gate],
) -> None:
    addr, gate = gated
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "bg", "", "x")
    gate.wait_entered()
    client.send_raw(b"\0BAD" + bytes(8))  # no request magic: the server closes
    check = Peer(addr)
    check.send(T.ECHO_REQ, "turn")
    check.expect(T.ECHO_RES)
    assert not readable(client)
    gate.let_one_go()
    client.expect(T.JOB_CREATED)  # its job is stored: it is told so before the close
    assert client.closed_within(5)
    assert client.pending == [], "bad magic is closed on without a word (docs/server.md)"


def test_a_peer_that_half_closes_gets_its_held_replies_first(gated: tuple[str, Gate]) -> None:
    """A script that submits, then shuts its side down (``nc -N``) and reads: asyncio closed
    the transport at the EOF, so the held JOB_CREATED never left while its job was stored
    and ran, and the script, told nothing, took the submit as failed."""
    addr, gate = gated
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "bg", "", "x")
    client.send(T.ECHO_REQ, "after")
    gate.wait_entered()
    client.sock.shutdown(socket.SHUT_WR)
    check = Peer(addr)
    check.send(T.ECHO_REQ, "turn")  # the loop has seen the EOF before this
    check.expect(T.ECHO_RES)
    assert not readable(client)
    gate.let_one_go()
    handle = client.expect(T.JOB_CREATED).args[0]
    assert client.expect(T.ECHO_RES).args == (b"after",)
    assert client.closed_within(5)
    assert f"{handle.decode()}\t" in check.admin("show jobs")  # stored and queued


def test_a_bug_releasing_one_connections_replies_costs_that_connection_alone(
    tmp_path: Path,
) -> None:
    """Were releasing one peer's held replies to raise, the other peers' replies and the
    batch's jobs must still go on: before, they waited for a restart."""
    with gated_server(tmp_path) as (addr, gate, server):
        broken, other = Peer(addr), Peer(addr)
        broken.send(T.SUBMIT_JOB_BG, "bg", "one", "x")
        gate.wait_entered()  # one's commit is being written
        other.send(T.SUBMIT_JOB_BG, "bg", "two", "x")  # staged for the next
        other.send(T.ECHO_REQ, "turn")
        wait_for("both held", lambda: len(server.hub.holding) == 2)
        port = broken.sock.getsockname()[1]
        (conn,) = [c for c in server.hub.connections if c.peer_port == port]

        def release_held(*_: object) -> list[tuple[bytes, int]]:
            raise RuntimeError("a bug in release_held")

        conn.release_held = release_held  # type: ignore[method-assign]  # the fault, injected
        gate.shut = False  # this commit and the next go through
        gate.let_one_go()
        assert broken.closed_within(5)  # it alone pays
        other.expect(T.JOB_CREATED)
        assert other.expect(T.ECHO_RES).args == (b"turn",)
        assert "bg\t2\t0\t0" in other.admin("status")  # both jobs committed and queued


def _commits(peer: Peer) -> float:
    (line,) = [
        line
        for line in peer.admin("metrics").splitlines()
        if line.startswith("farm_store_commits_total ")
    ]
    return float(line.split()[1])


def test_a_failing_store_waits_for_its_retry_with_deletes_held(gated: tuple[str, Gate]) -> None:
    addr, gate = gated
    gate.shut = False  # writes go through, until they fail
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "bg", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    gate.failing = True  # the disk is full: the delete of the finished job is held back
    worker = Peer(addr)
    worker.send(T.CAN_DO, "bg")
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == handle
    worker.send(T.WORK_COMPLETE, handle, "")
    check = Peer(addr)
    wait_for("the failed commit", lambda: _commits(check) >= 2)
    # Until retry_after (1 s) nothing is tried: no commit a loop turn in the meantime.
    before = _commits(check)
    for _ in range(20):
        check.send(T.ECHO_REQ, "turn")
        check.expect(T.ECHO_RES)
    assert _commits(check) <= before + 1


@pytest.mark.timeout(60)
def test_replies_held_for_a_commit_stop_the_reading_of_their_peer(tmp_path: Path) -> None:
    """Replies held behind a JOB_CREATED reach no transport, so neither its high-water mark
    nor --max-unread-bytes saw them: a TCP peer piping echoes behind a background submit
    while its commit was slow made the server hold all of them (96 MiB past an 8 MiB
    limit). Past HELD_READ_LIMIT such a peer is not read until they leave."""
    mib = 1 << 20
    flags = ("--max-packet", str(2 * mib), "--max-unread-bytes", str(8 * mib))
    with gated_server(tmp_path, *flags) as (addr, gate, server):
        client = Peer(addr)
        client.send(T.SUBMIT_JOB_BG, "bg", "", "x")
        gate.wait_entered()  # its commit has begun, and does not end (a slow disk)
        echo = p.encode_req(T.ECHO_REQ, b"e" * (3 * mib // 2))
        sent = threading.Event()

        def flood() -> None:  # 96 MiB of echoes, none read meanwhile
            for _ in range(64):
                client.sock.sendall(echo)
            sent.set()

        threading.Thread(target=flood, daemon=True).start()
        sent.wait(3)
        holding = list(server.hub.holding)
        held = sum(len(reply.after) for conn in holding for reply in conn.held or ())
        assert held <= 16 * mib, f"{held >> 20} MiB of replies held for a peer past the limit"
        gate.shut = False
        gate.let_one_go()  # committed: what was held leaves, and the peer is read again
        client.expect(T.JOB_CREATED)
        for _ in range(64):
            assert len(client.expect(T.ECHO_RES).args[0]) == 3 * mib // 2
        assert sent.wait(10)


@pytest.mark.timeout(60)
def test_replies_held_for_a_commit_count_against_max_unread_bytes(tmp_path: Path) -> None:
    """Held replies are owed to their TCP peers as much as unread ones: six peers holding
    1.5 MiB each behind a slow commit pass a 4 MiB --max-unread-bytes together, and the
    ones owed the most are disconnected, as peers not reading their replies are."""
    mib = 1 << 20
    flags = ("--max-packet", str(2 * mib), "--max-unread-bytes", str(4 * mib))
    with gated_server(tmp_path, *flags) as (addr, gate, server):
        first = Peer(addr)
        first.send(T.SUBMIT_JOB_BG, "bg", "", "x")
        gate.wait_entered()  # a slow commit: everything below waits for it
        echo = p.encode_req(T.ECHO_REQ, b"e" * (3 * mib // 4))
        peers = []
        for n in range(6):
            peer = Peer(addr)
            peer.send(T.SUBMIT_JOB_BG, "bg", f"u{n}", "x")
            peer.sock.sendall(echo * 2)
            peers.append(peer)
        loop = server.loop
        assert loop is not None

        async def owed() -> int:  # read on the server's loop, between its callbacks
            holding = [conn for conn in server.hub.holding if not conn.closed]
            return sum(len(reply.after) for conn in holding for reply in conn.held or ())

        for _ in range(15):  # while the server reads what the peers sent
            held = asyncio.run_coroutine_threadsafe(owed(), loop).result(10)
            assert held <= 4 * mib, f"{held >> 20} MiB held for TCP peers past the limit"
            time.sleep(0.1)
        gate.shut = False
        gate.let_one_go()
        assert first.expect(T.JOB_CREATED)
        # All of it gone once the next batch is committed too: released, or dropped with its peer.
        wait_for("the held replies gone", lambda: server.hub.tcp_held == 0)
