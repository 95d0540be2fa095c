"""A worker streaming to a client that does not read cannot fill the server's memory.

A worker sending WORK_DATA to a client that never read once made the server hold
500 MB. Now the server stops reading that worker while the client's buffer is
above its high-water mark, and reads it again once the client catches up. Results the
client is sent still pile up: past --max-unread-bytes (TCP peers together) the peer
leaving the most unread is disconnected (two local connections held 5 GB of results).
"""

from __future__ import annotations

import select
import socket
import threading
import time
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


def streaming_worker(
    worker: Peer, handle: bytes, chunks: int = 320, size: int = 64 << 10
) -> threading.Event:
    """A thread sending ``chunks`` WORK_DATA of ``size`` bytes (20 MiB by default: past
    what the sockets between it and the client buffer) for ``handle``, then WORK_COMPLETE;
    set when all is sent."""
    sent = threading.Event()
    data = p.encode_req(T.WORK_DATA, handle, b"d" * size)

    def write() -> None:
        try:
            for _ in range(chunks):
                worker.sock.sendall(data)
            worker.sock.sendall(p.encode_req(T.WORK_COMPLETE, handle, b"end"))
        except OSError:
            return
        sent.set()

    worker.sock.settimeout(None)
    threading.Thread(target=write, daemon=True).start()
    return sent


def not_reading_client(
    peer_factory: Callable[[str], Peer], addr: str, small: bool = True
) -> tuple[Peer, bytes]:
    """A client that submits a job of "stream" and from then on reads nothing; ``small``:
    its receive buffer 4 KiB (what the server sent it before it went then comes slowly)."""
    client = peer_factory(addr)
    client.send(T.SUBMIT_JOB, "stream", "", "go")
    handle = client.expect(T.JOB_CREATED).args[0]
    if small:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return client, handle


@pytest.mark.timeout(60)
def test_a_job_that_times_out_frees_its_worker_of_a_client_that_does_not_read(
    peer_factory: Callable[[str], Peer],
) -> None:
    # The worker stayed unread after the job's CAN_DO_TIMEOUT had failed it: it never
    # finished its stream, nor took another job, for as long as the client lived.
    srv = start_farm_server()  # --stall-timeout's 60 s: only the job's end frees it here
    try:
        _, handle = not_reading_client(peer_factory, srv.addr)
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO_TIMEOUT, "stream", "2")
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == handle
        sent = streaming_worker(worker, handle)
        assert not sent.wait(1.0), "the stream was read whole: no client held the worker up"
        assert sent.wait(20), "the worker was not read again once its job timed out"
        other = peer_factory(srv.addr)  # a client that reads: the worker serves it now
        other.send(T.SUBMIT_JOB, "stream", "", "next")
        next_handle = other.expect(T.JOB_CREATED).args[0]
        worker.send(T.GRAB_JOB)
        pkt = worker.recv(10)
        while pkt.type != T.JOB_ASSIGN:  # NOOPs, and no more than that: its stream was dropped
            assert pkt.type == T.NOOP, (pkt.name, pkt.args)
            pkt = worker.recv(10)
        assert pkt.args[0] == next_handle
        worker.send(T.WORK_COMPLETE, next_handle, "done")
        assert other.expect(T.WORK_COMPLETE).args == (next_handle, b"done")
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_client_that_reads_nothing_past_the_stall_timeout_is_disconnected(
    peer_factory: Callable[[str], Peer],
) -> None:
    # A job with no timeout of its own: the worker streaming to a client that stopped
    # reading waited for it for ever (its stream unread, --max-unread-bytes never reached).
    srv = start_farm_server("--stall-timeout", "1")
    try:
        client, handle = not_reading_client(peer_factory, srv.addr, small=False)
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "stream")
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == handle
        sent = streaming_worker(worker, handle, chunks=640)  # past loopback's larger buffers
        assert not sent.wait(0.5), "the stream was read whole: no client held the worker up"
        assert sent.wait(20), "the worker waited for a client that read nothing"
        # Read only now: a client that reads is no longer one that stalls.
        assert client.closed_within(10), "the client that read nothing was not disconnected"
        other = peer_factory(srv.addr)
        other.send(T.ECHO_REQ, "still here")
        assert other.expect(T.ECHO_RES).args == (b"still here",)
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_a_client_reading_steadily_but_slowly_is_not_disconnected_by_the_stall_timeout(
    peer_factory: Callable[[str], Peer],
) -> None:
    # The stall timer ran from the worker's first hold, and only a drain below the
    # low-water mark stopped it: a client reading 200 KiB/s with more than --stall-timeout's
    # worth waiting was cut mid-stream (at the default 60 s: 14 MB in, after 75 s).
    size, chunks, rate = 2 << 20, 8, 2 << 20  # a packet takes twice the timeout to read
    srv = start_farm_server("--stall-timeout", "0.5")
    try:
        client = peer_factory(srv.addr)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        client.send(T.SUBMIT_JOB, "stream", "", "go")
        handle = client.expect(T.JOB_CREATED).args[0]
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "stream")
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == handle
        sent = streaming_worker(worker, handle, chunks=chunks, size=size)
        decoder = p.Decoder(allow_admin=False)
        took, received, start, ended = 0, 0, time.monotonic(), False
        while not ended:
            # Paced: at no moment more than ``rate`` allows since the start (the pace is
            # what is tested: a reader never idle for the timeout, and slower than the
            # worker's stream).
            time.sleep(max(0.0, start + took / rate - time.monotonic()))
            data = client.sock.recv(64 << 10)
            lasted = time.monotonic() - start
            assert data, f"disconnected after {took} bytes in {lasted:.1f}s, reading steadily"
            took += len(data)
            for pkt in decoder.feed(data):
                assert isinstance(pkt, p.Packet) and pkt.type in (T.WORK_DATA, T.WORK_COMPLETE)
                if pkt.type == T.WORK_COMPLETE:
                    assert pkt.args == (handle, b"end")
                    ended = True
                else:
                    received += len(pkt.args[1])
        assert received == chunks * size, "the whole stream, nothing lost"
        assert sent.wait(10)
    finally:
        srv.stop()
