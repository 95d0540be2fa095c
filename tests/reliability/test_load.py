"""Load: 1,000 concurrent connections and 100,000 queued jobs, drained exactly once.

Everything runs on loopback against a real server process; the counts are
fixed, so the test ends by itself (about ten seconds on two cores).
"""

from __future__ import annotations

import multiprocessing as mp
import selectors

import psutil
import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, connect, start_farm_server
from tests.helpers.waiting import wait_for

# serial: its fixed counts of connections, jobs and RSS, and its rates, are the machine's alone
pytestmark = [pytest.mark.slow, pytest.mark.serial]

CONNECTIONS = 1000
JOBS_PER_CONNECTION = 100
TOTAL = CONNECTIONS * JOBS_PER_CONNECTION
RSS_LIMIT_MB = 400


def drain_worker(addr: str, results: mp.Queue) -> None:
    """Grab until NO_JOB (everything was queued before it started); report the uniques done."""
    sock = connect(addr, timeout=30)
    decoder = p.Decoder(allow_admin=False)
    grab = p.encode_req(T.GRAB_JOB_UNIQ)
    sock.sendall(p.encode_req(T.CAN_DO, b"load") + grab)
    done: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            break
        out = bytearray()
        finished = False
        for pkt in decoder.feed(data):
            if pkt.type == T.JOB_ASSIGN_UNIQ:
                done.append(pkt.args[2])
                out += p.encode_req(T.WORK_COMPLETE, pkt.args[0], b"") + grab
            elif pkt.type == T.NO_JOB:
                finished = True
        if finished:
            break
        sock.sendall(out)
    sock.close()
    results.put(done)


def test_thousand_connections_hundred_thousand_jobs(farm_server: Server) -> None:
    selector = selectors.DefaultSelector()
    expected = set()
    for c in range(CONNECTIONS):
        sock = connect(farm_server.addr, timeout=30)
        batch = bytearray()
        for i in range(JOBS_PER_CONNECTION):
            unique = f"c{c}-{i}".encode()
            expected.add(unique)
            batch += p.encode_req(T.SUBMIT_JOB_BG, b"load", unique, b"x" * 16)
        sock.sendall(batch)
        selector.register(sock, selectors.EVENT_READ, [p.Decoder(allow_admin=False), 0])

    created = 0
    while created < TOTAL:
        events = selector.select(timeout=30)
        assert events, f"stalled after {created} JOB_CREATED"
        for key, _ in events:
            decoder, count = key.data
            for pkt in decoder.feed(key.fileobj.recv(1 << 16)):
                assert pkt.type == T.JOB_CREATED, pkt
                count += 1
            key.data[1] = count
        created = sum(k.data[1] for k in selector.get_map().values())

    server_proc = psutil.Process(farm_server.proc.pid)
    assert len(server_proc.net_connections()) >= CONNECTIONS  # all still open at once
    rss_mb = server_proc.memory_info().rss / 2**20
    assert rss_mb < RSS_LIMIT_MB, f"server RSS {rss_mb:.0f} MB with {TOTAL} jobs queued"

    results: mp.Queue = mp.Queue()
    workers = [mp.Process(target=drain_worker, args=(farm_server.addr, results)) for _ in range(2)]
    for w in workers:
        w.start()
    done = [u for _ in workers for u in results.get(timeout=120)]
    for w in workers:
        w.join(10)
    assert len(done) == TOTAL  # no job ran twice ...
    assert set(done) == expected  # ... and none was lost
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()


def test_connections_past_the_limit_are_closed_cleanly() -> None:
    srv = start_farm_server("--max-connections", "5")
    try:
        held = [connect(srv.addr) for _ in range(5)]
        for s in held:  # each is really served
            s.sendall(p.encode_req(T.ECHO_REQ, b"x"))
            assert s.recv(100).endswith(b"x")
        extra = connect(srv.addr)
        extra.settimeout(5)
        try:
            assert extra.recv(100) == b""  # closed at once, nothing sent
        except ConnectionResetError:
            pass
        held[0].sendall(p.encode_req(T.ECHO_REQ, b"y"))
        assert held[0].recv(100).endswith(b"y")
        for s in held + [extra]:
            s.close()
    finally:
        srv.stop()


def test_total_queued_bytes_limit_gives_queue_error(tmp_path) -> None:
    log = tmp_path / "server.log"
    # A TCP peer's jobs may hold 3/4 of it (2250): the rest is kept for the Unix socket.
    srv = start_farm_server("--max-queued-bytes", "3000", "-l", str(log))
    try:
        peer = Peer(srv.addr)
        peer.send(T.SUBMIT_JOB_BG, "f", "", b"a" * 600)  # 600 + 1 + 512 (JOB_OVERHEAD)
        peer.expect(T.JOB_CREATED)
        peer.send(T.SUBMIT_JOB_BG, "f", "", b"b" * 700)
        assert peer.expect(T.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")  # gearmand's
        peer.send(T.SUBMIT_JOB_BG, "f", "", b"c" * 300)  # still room for this one
        peer.expect(T.JOB_CREATED)
        # The log says which limit it was: no maxqueue was set, and nothing said so.
        said = wait_for("the refusal logged", lambda: "QUEUE_ERROR to fd" in log.read_text())
        assert said and "function f: TCP peers' jobs would pass their share, 3/4 of" in (
            log.read_text()
        )
    finally:
        srv.stop()


def test_default_per_function_queue_limit_and_admin_override() -> None:
    srv = start_farm_server("--max-queue", "2")
    try:
        peer = Peer(srv.addr)
        for _ in range(2):
            peer.send(T.SUBMIT_JOB_BG, "f", "", "x")
            peer.expect(T.JOB_CREATED)
        peer.send(T.SUBMIT_JOB_BG, "f", "", "x")
        assert peer.expect(T.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")
        peer.send(T.SUBMIT_JOB_BG, "g", "", "x")  # the limit is per function
        peer.expect(T.JOB_CREATED)
        assert peer.admin("maxqueue f 3") == "OK\r\n"
        peer.send(T.SUBMIT_JOB_BG, "f", "", "x")
        peer.expect(T.JOB_CREATED)
    finally:
        srv.stop()
