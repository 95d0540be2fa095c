"""A worker streaming to a client that does not read cannot fill the server's memory.

A worker sending WORK_DATA to a client that never read once made the server hold
500 MB. Now the server stops reading that worker while the client's buffer is
above its high-water mark, and reads it again once the client catches up. Results the
client is sent still pile up: past --max-unread-bytes (TCP peers together) the peer
leaving the most unread is disconnected (two local connections held 5 GB of results).
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server

CHUNK = 1 << 20
CHUNKS = 96


@pytest.mark.timeout(60)
def test_a_worker_is_not_read_while_its_client_does_not_read(
    peer_factory: Callable[[str], Peer],
) -> None:
    srv = start_farm_server()
    try:
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB, "stream", "", "go")
        handle = client.expect(T.JOB_CREATED).args[0]
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "stream")
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == handle

        packet = p.encode_req(T.WORK_DATA, handle, b"d" * CHUNK)
        stream = memoryview(packet * 8)
        accepted = 0  # bytes of the stream the server took while the client read nothing
        worker.sock.setblocking(False)
        while accepted < len(packet) * CHUNKS:
            _, writable, _ = select.select([], [worker.sock], [], 2.0)
            if not writable:
                break  # the server stopped reading this worker
            accepted += worker.sock.send(stream[accepted % len(stream) :])
        assert accepted < len(packet) * CHUNKS, "the server read everything the worker sent"
        assert accepted < 48 * CHUNK, f"the server took {accepted >> 20} MiB before stopping"

        # The client catches up: the rest of the stream flows, nothing is lost.
        whole = -(-accepted // len(packet)) * len(packet)  # finish the packet in flight

        def finish() -> None:
            worker.sock.setblocking(True)
            rest = whole - accepted
            worker.sock.sendall(stream[accepted % len(stream) :][:rest])
            worker.sock.sendall(packet * 4 + p.encode_req(T.WORK_COMPLETE, handle, b"end"))

        writer = threading.Thread(target=finish, daemon=True)
        writer.start()
        received = 0
        while True:
            pkt = client.recv(30)
            if pkt.type == T.WORK_COMPLETE:
                assert pkt.args == (handle, b"end")
                break
            assert pkt.type == T.WORK_DATA
            received += len(pkt.args[1])
        writer.join(30)
        assert received == (whole // len(packet) + 4) * CHUNK
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_results_a_tcp_client_leaves_unread_count_against_max_unread_bytes(
    peer_factory: Callable[[str], Peer],
) -> None:
    mib = 1 << 20
    srv = start_farm_server("--max-packet", str(4 * mib), "--max-unread-bytes", str(16 * mib))
    try:
        client = peer_factory(srv.addr)
        for _ in range(40):
            client.send(T.SUBMIT_JOB, "big", "", "")
        for _ in range(40):
            client.expect(T.JOB_CREATED)
        # From here the client reads nothing while each job ends with 3 MiB: 120 MiB.
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "big")
        answered = 0
        while answered < 40:
            worker.send(T.GRAB_JOB)
            pkt = worker.recv(30)
            while pkt.type not in (T.JOB_ASSIGN, T.NO_JOB):
                pkt = worker.recv(30)  # JOB_NOT_FOUND for a result of the dropped client
            if pkt.type == T.NO_JOB:
                break  # the client was disconnected: its jobs went with it
            worker.send(T.WORK_COMPLETE, pkt.args[0], b"r" * (3 * mib))
            answered += 1
        results = 0
        try:
            while True:
                if client.recv(30).type == T.WORK_COMPLETE:
                    results += 1
        except (ConnectionError, OSError):
            pass  # closed by the server
        assert results < 40, "every result was held for a client that read none"
        assert answered < 40, "the worker was handed the jobs of a client that was gone"
        other = peer_factory(srv.addr)
        other.send(T.ECHO_REQ, "still here")
        assert other.expect(T.ECHO_RES).args == (b"still here",)
    finally:
        srv.stop()
