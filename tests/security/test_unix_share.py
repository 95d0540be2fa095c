"""What one TCP peer -- any local user -- can take of the server's limits, the Unix socket
keeps a share of: connections (--max-connections), unfinished packets' bytes
(--max-partial-bytes), queued jobs' bytes (--max-queued-bytes) and a function's jobs
(--max-queue, maxqueue), so the farm's own
workers and Executor calls are not locked out."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import connect, free_port, start_farm_server
from tests.helpers.waiting import wait_for


def test_tcp_peers_cannot_take_the_unix_sockets_last_connections(unix_sock: str) -> None:
    unix = unix_sock
    srv = start_farm_server("--max-connections", "20", unix=unix)  # 2 kept for the socket
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        held = [connect(srv.addr) for _ in range(18)]
        for s in held:  # each is really served
            s.sendall(p.encode_req(T.ECHO_REQ, b"x"))
            assert s.recv(100).endswith(b"x")
        extra = connect(srv.addr)
        extra.settimeout(5)
        try:
            assert extra.recv(100) == b"", "a 19th TCP peer is closed at once"
        except ConnectionResetError:
            pass
        local = Peer(f"unix:{unix}")
        local.send(T.ECHO_REQ, "mine")
        assert local.expect(T.ECHO_RES).args == (b"mine",)
        for s in [*held, extra]:
            s.close()
    finally:
        srv.stop()


def test_tcp_peers_cannot_take_the_unix_sockets_share_of_unfinished_packets(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # One packet's worth (--max-packet) of the 2 MB is kept for the Unix socket: TCP peers
    # holding half-sent bodies once made the farm's own 900 KB call fail.
    unix = unix_sock
    limits = ("--max-packet", "1000000", "--max-partial-bytes", "2000000")
    srv = start_farm_server(*limits, unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        header = p.HEADER.pack(p.REQ, T.SUBMIT_JOB_BG, 950_000)
        hog = peer_factory(srv.addr)
        hog.send_raw(header + b"f\0\0" + b"x" * 900_000)
        more = peer_factory(srv.addr)
        more.send_raw(header + b"f\0\0" + b"y" * 200_000)  # TCP's share is 1 MB
        # Whichever the server reads last takes TCP past its share and is refused (the
        # kernel may hand it the second peer's bytes before all of the first's).
        readable, _, _ = select.select([hog.sock, more.sock], [], [], 10)
        assert readable, "neither TCP peer was refused"
        refused = hog if hog.sock in readable else more
        err = refused.expect(T.ERROR)
        assert err.args[0] == b"ARGUMENT_TOO_LARGE" and b"partly received" in err.args[1]
        local = Peer(f"unix:{unix}")
        local.send_raw(header + b"f\0\0" + b"z" * 949_997)
        assert local.expect(T.JOB_CREATED).type == T.JOB_CREATED
    finally:
        srv.stop()


def test_tcp_peers_cannot_take_the_unix_sockets_share_of_queued_bytes(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # A local user queued background jobs for a function no worker serves until the queue
    # was full: the farm's own Executor then got QUEUE_ERROR on the Unix socket, and the
    # jobs outlived the user's connection (and, stored, a restart).
    unix = unix_sock
    srv = start_farm_server("--max-queued-bytes", "4000000", unix=unix)  # TCP's: 3 MB
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        hog = peer_factory(srv.addr)
        for _ in range(3):
            hog.send(T.SUBMIT_JOB_LOW_BG, "junk", "", b"x" * 900_000)
            hog.expect(T.JOB_CREATED)
        hog.send(T.SUBMIT_JOB_LOW_BG, "junk", "", b"x" * 900_000)
        assert hog.expect(T.ERROR).args == (b"QUEUE_ERROR", b"Job queue is full")
        local = Peer(f"unix:{unix}")
        local.send(T.SUBMIT_JOB_BG, "mine", "", b"y" * 900_000)  # the quarter kept for it
        assert local.expect(T.JOB_CREATED).type == T.JOB_CREATED
    finally:
        srv.stop()


def test_tcp_peers_cannot_make_functions_past_max_functions(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # 25 TCP connections of 4,096 names each made the server hold 13 GB, and a scrape of
    # its metrics took minutes; only 256 of the names are ever labelled in the metrics.
    unix = unix_sock
    srv = start_farm_server("--max-functions", "300", unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        hog = peer_factory(srv.addr)
        hog.send_raw(b"".join(p.encode_req(T.CAN_DO, b"f%d" % i) for i in range(300)))
        hog.send(T.CAN_DO, "one-more")
        assert hog.expect(T.ERROR).args == (
            b"QUEUE_ERROR",
            b"the server holds --max-functions functions",
        )
        hog.send(T.SUBMIT_JOB_BG, "another", "", "x")
        assert hog.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
        hog.send(T.SUBMIT_JOB_BG, "f7", "", "x")  # a function it holds takes jobs
        hog.expect(T.JOB_CREATED)
        local = Peer(f"unix:{unix}")
        local.send(T.SUBMIT_JOB_BG, "mine", "", "x")
        local.expect(T.JOB_CREATED)
        local.send(T.CAN_DO, "local-pool")  # after the TCP names, yet labelled before them
        local.send(T.ECHO_REQ, "sync")
        local.expect(T.ECHO_RES)
        metrics = local.admin("metrics")
        labelled = {
            line.split('function="')[1].split('"')[0]
            for line in metrics.splitlines()
            if line.startswith("farm_workers{")
        }
        assert len(labelled) == 257 and "other" in labelled  # 256 names, and the sum
        assert "local-pool" in labelled, "a TCP peer's names crowded the farm's pool out"
    finally:
        srv.stop()


def test_tcp_admin_cannot_make_functions_past_max_functions(unix_sock: str) -> None:
    """`create function` and `maxqueue` make the function they name: with --tcp-admin full
    (a bare `farm server`, as gearmand) they are bound over TCP as CAN_DO and SUBMIT are."""
    unix = unix_sock
    srv = start_farm_server("--max-functions", "3", "--tcp-admin", "full", unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        tcp = Peer(srv.addr)
        for name in ("f1", "f2", "f3"):
            assert tcp.admin(f"create function {name}") == "OK\r\n"
        too_many = "ERR QUEUE_ERROR the+server+holds+--max-functions+functions\r\n"
        assert tcp.admin("create function f4") == too_many
        # a word more is refused for its shape, as on any server, before any count
        assert tcp.admin("create function f4 extra").startswith("ERR INVALID_ARGUMENTS")
        assert tcp.admin("maxqueue f5 10") == too_many
        assert tcp.admin("maxqueue f1 10") == "OK\r\n", "a function it holds is no new one"
        assert tcp.admin("create function f2") == "OK\r\n"
        local = Peer(f"unix:{unix}")
        assert local.admin("create function mine") == "OK\r\n", "the farm's own socket may"
        status = local.admin("status")
        assert "f4\t" not in status and "f5\t" not in status and "mine\t" in status
    finally:
        srv.stop()


def test_tcp_peers_together_register_at_most_max_tcp_abilities(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # Each connection may register --max-abilities (4,096) functions, of names up to 512
    # bytes: 200 TCP connections of 4,096 made the server hold 460 MB more, so the 10,000
    # connections any local user may open were 24 GB. TCP peers share one budget now.
    unix = unix_sock
    srv = start_farm_server("--max-tcp-abilities", "100", unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        first, second = peer_factory(srv.addr), peer_factory(srv.addr)
        first.send_raw(b"".join(p.encode_req(T.CAN_DO, b"f%d" % i) for i in range(60)))
        first.send(T.ECHO_REQ, "sync")
        first.expect(T.ECHO_RES)
        second.send_raw(b"".join(p.encode_req(T.CAN_DO, b"g%d" % i) for i in range(40)))
        second.send(T.CAN_DO, "g40")
        assert second.expect(T.ERROR).args == (
            b"QUEUE_ERROR",
            b"the server holds --max-tcp-abilities TCP workers' functions",
        )
        second.send(T.CAN_DO, "g0")  # one it holds is no new registration
        second.send(T.ECHO_REQ, "sync")
        assert second.expect(T.ECHO_RES).args == (b"sync",), "not closed, nothing else refused"
        local = Peer(f"unix:{unix}")
        local.send(T.CAN_DO, "g40")  # the farm's own workers are not counted
        local.send(T.ECHO_REQ, "sync")
        local.expect(T.ECHO_RES)
        status = dict(line.split("\t", 1) for line in local.admin("status").splitlines()[:-1])
        assert status["g40"].endswith("\t1") and status["g39"].endswith("\t1"), status
        first.close()  # its 60 go back to the budget
        wait_for("the first peer to be gone", lambda: "f59\t0\t0\t0\n" in local.admin("status"))
        second.send(T.CAN_DO, "g40")
        second.send(T.ECHO_REQ, "sync")
        assert second.expect(T.ECHO_RES).type == T.ECHO_RES
        status = dict(line.split("\t", 1) for line in local.admin("status").splitlines()[:-1])
        assert status["g40"].endswith("\t2"), status
    finally:
        srv.stop()


def test_one_result_to_many_attached_submits_counts_against_max_unread_bytes(
    peer_factory: Callable[[str], Peer],
) -> None:
    # A submit of a unique that a job already has attaches to it, once per submit, and
    # each attachment is sent the result: 300 small submits and one 1 MB WORK_COMPLETE had
    # the server make 300 MB of replies in one turn, before any write could show that the
    # peer does not read (2,000 of them: over 3 GB, and growing).
    srv = start_farm_server("--max-packet", str(2 << 20), "--max-unread-bytes", str(4 << 20))
    try:
        server = psutil.Process(srv.proc.pid)
        client, worker = peer_factory(srv.addr), peer_factory(srv.addr)
        client.send_raw(p.encode_req(T.SUBMIT_JOB, b"mirror", b"u", b"x") * 300)
        handles = {client.expect(T.JOB_CREATED).args[0] for _ in range(300)}
        assert len(handles) == 1, "one job, 300 attachments"
        worker.send(T.CAN_DO, "mirror")
        worker.send(T.GRAB_JOB)
        worker.expect(T.JOB_ASSIGN)
        before = server.memory_info().rss
        worker.send(T.WORK_COMPLETE, handles.pop(), b"r" * (1 << 20))
        worker.send(T.ECHO_REQ, "after")  # answered once the server has handled the result
        worker.expect(T.ECHO_RES)
        grew = server.memory_info().rss - before
        assert grew < 64 << 20, f"the server grew {grew >> 20} MiB"
        assert client.closed_within(5), "the peer owed the most is cut off"
        other = peer_factory(srv.addr)
        other.send(T.ECHO_REQ, "still")
        assert other.expect(T.ECHO_RES).args == (b"still",)
    finally:
        srv.stop()


def test_tcp_peers_cannot_queue_executor_calls_ahead_of_the_unix_sockets(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # Any local user may submit to farm.python over TCP. The workers refuse such unsigned
    # jobs, but only once they reach them: 25 s of high-priority background junk from one
    # connection queued 200,000 of them, and the farm's own Executor calls on the Unix socket
    # waited minutes behind them (stored, across a restart too). TCP's jobs for farm.* now
    # queue low, behind every call from the Unix socket.
    unix = unix_sock
    srv = start_farm_server(unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        junk = peer_factory(srv.addr)
        for kind in (T.SUBMIT_JOB_HIGH_BG, T.SUBMIT_JOB_HIGH):
            junk.send(kind, "farm.python", "", b"fx1\0unsigned")
            junk.expect(T.JOB_CREATED)
        caller = Peer(f"unix:{unix}")
        caller.send(T.SUBMIT_JOB, "farm.python", "", b"a signed call")
        mine = caller.expect(T.JOB_CREATED).args[0]
        assert "farm.python\t0\t1\t2\t0" in caller.admin("prioritystatus")
        worker = Peer(f"unix:{unix}")
        worker.send(T.CAN_DO, "farm.python")
        worker.send(T.GRAB_JOB)
        assert worker.expect(T.JOB_ASSIGN).args[0] == mine, "a TCP peer's job went first"
        # A TCP peer's jobs for other functions keep the priority they asked for.
        junk.send(T.SUBMIT_JOB_HIGH_BG, "reverse", "", b"x")
        junk.expect(T.JOB_CREATED)
        assert "reverse\t1\t0\t0\t0" in caller.admin("prioritystatus")
        caller.close()
        worker.close()
    finally:
        srv.stop()


def _flood(hog: Peer, function: str, count: int) -> list[bytes]:
    """Pipeline ``count`` background submits of ``function``: what each was answered
    (CREATED, or the error's code)."""
    junk = (p.encode_req(T.SUBMIT_JOB_BG, function.encode(), b"", b"%d" % i) for i in range(count))
    hog.send_raw(b"".join(junk))
    replies = [hog.recv(10) for _ in range(count)]
    return [b"CREATED" if r.type == T.JOB_CREATED else r.args[0] for r in replies]


def test_tcp_peers_cannot_take_the_unix_sockets_share_of_max_queue(
    peer_factory: Callable[[str], Peer], tmp_path: Path
) -> None:
    # With [server] max_queue = 50, one local user's 50 jobs for farm.python over TCP (stored,
    # or scheduled a year ahead) left the farm's own Executor QUEUE_ERROR on the Unix socket,
    # and the stored ones did so again after a restart. TCP peers' jobs may fill three
    # quarters of a function's limit now, as of --max-queued-bytes.
    db, unix, port = tmp_path / "queue.db", str(tmp_path / "g.sock"), free_port()
    limits = ("--max-queue", "8", "--store", str(db))  # TCP's share: 6
    srv = start_farm_server(*limits, port=port, unix=unix)
    try:
        answers = _flood(peer_factory(srv.addr), "farm.python", 8)
        assert answers == [b"CREATED"] * 6 + [b"QUEUE_ERROR"] * 2, answers
        caller = peer_factory(f"unix:{unix}")
        caller.send(T.SUBMIT_JOB, "farm.python", "", b"a signed call")
        caller.expect(T.JOB_CREATED)
        caller.send(T.SUBMIT_JOB_BG, "farm.python", "", b"another")
        caller.expect(T.JOB_CREATED)
        caller.send(T.SUBMIT_JOB_BG, "farm.python", "", b"past max_queue")
        assert caller.expect(T.ERROR).args[0] == b"QUEUE_ERROR", "the limit still holds"
    finally:
        srv.stop()
    srv = start_farm_server(*limits, port=port, unix=unix)  # the TCP jobs come back
    try:
        local = peer_factory(f"unix:{unix}")
        assert "farm.python\t7\t0\t0" in local.admin("status")
        assert _flood(peer_factory(srv.addr), "farm.python", 1) == [b"QUEUE_ERROR"]
        local.send(T.SUBMIT_JOB, "farm.python", "", b"a signed call")
        local.expect(T.JOB_CREATED)
    finally:
        srv.stop()


def test_a_server_with_no_unix_socket_gives_tcp_peers_all_of_max_queue(
    peer_factory: Callable[[str], Peer],
) -> None:
    # gearmand's limit, exactly: no Unix socket, nothing to keep a share for.
    srv = start_farm_server("--max-queue", "8")
    try:
        answers = _flood(peer_factory(srv.addr), "f", 9)
        assert answers == [b"CREATED"] * 8 + [b"QUEUE_ERROR"], answers
    finally:
        srv.stop()


def test_tcp_peers_cannot_schedule_jobs_of_the_reserved_functions(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    # A job held for its epoch counts against max_queue until it is due (a year ahead: a
    # year), and is stored. The Executor never schedules a call, and a signed call expires
    # within hours, so such a submit over TCP can only be another user's flood.
    srv = start_farm_server(unix=unix_sock)
    try:
        later = str(int(time.time()) + 365 * 86400)
        tcp = peer_factory(srv.addr)
        tcp.send(T.SUBMIT_JOB_EPOCH, "farm.python", "", later, b"junk")
        assert tcp.expect(T.ERROR).args[0] == b"PERMISSION_DENIED"
        tcp.send(T.SUBMIT_JOB_EPOCH, "reverse", "", later, b"x")  # other functions may
        tcp.expect(T.JOB_CREATED)
        local = peer_factory(f"unix:{unix_sock}")  # the farm's own user may
        local.send(T.SUBMIT_JOB_EPOCH, "farm.python", "", later, b"x")
        local.expect(T.JOB_CREATED)
        assert "farm.python\t1\t0\t0" in local.admin("status")
    finally:
        srv.stop()
