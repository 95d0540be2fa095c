"""What any local user can make the server log. A peer cut off at a limit is logged, but
at most one line each 10 s per kind (farm.logrepeats.Brief, as for refused submits): a loop
of connections past --max-connections wrote a warning each, thousands a second, and
the journal's rate limit (journald: 10,000 lines in 30 s a unit) then drops the farm's
other lines, a worker's crash among them."""

from __future__ import annotations

import socket
from pathlib import Path

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import connect, start_farm_server
from tests.helpers.waiting import wait_for


def test_connections_past_the_limit_are_logged_briefly(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    srv = start_farm_server("--max-connections", "20", "--log-file", str(log))
    held: list[socket.socket] = []
    try:
        held = [connect(srv.addr) for _ in range(18)]  # the last 2 are the Unix socket's
        for s in held:
            s.sendall(p.encode_req(T.ECHO_REQ, b"x"))
            assert s.recv(100).endswith(b"x")
        for _ in range(300):
            extra = connect(srv.addr)
            extra.settimeout(5)
            try:
                assert extra.recv(100) == b"", "a peer past the limit is closed at once"
            except ConnectionResetError:
                pass
            extra.close()
        with connect(srv.addr) as last:  # the server has logged whatever it will by now
            last.settimeout(5)
            assert last.recv(100) == b""
        wait_for(
            "the first refusal in the log", lambda: "past --max-connections" in log.read_text()
        )
        lines = [line for line in log.read_text().splitlines() if "past --max-connections" in line]
        assert len(lines) == 1, f"{len(lines)} lines for 301 refused connections"
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_timeouts_and_poison_jobs_of_tcp_workers_are_logged_briefly(tmp_path: Path) -> None:
    """A worker over TCP (any local user) whose jobs time out, or that dies holding them,
    made a line each; the farm's own workers, on the Unix socket, still get one each."""
    log = tmp_path / "server.log"
    unix = str(tmp_path / "gearman.sock")
    srv = start_farm_server("--job-retries", "1", "--log-file", str(log), unix=unix)
    try:
        client = Peer(srv.addr)
        for function in ("slow", "dies"):
            client.send_raw(
                b"".join(
                    p.encode_req(T.SUBMIT_JOB_BG, function.encode(), b"", b"x") for _ in range(30)
                )
            )
        for _ in range(60):
            client.expect(T.JOB_CREATED)
        slow = [Peer(srv.addr) for _ in range(30)]
        for worker in slow:
            worker.send(T.CAN_DO_TIMEOUT, "slow", "1")
            worker.send(T.GRAB_JOB)
            worker.expect(T.JOB_ASSIGN)
        for _ in range(30):
            dying = Peer(srv.addr)
            dying.send(T.CAN_DO, "dies")
            dying.send(T.GRAB_JOB)
            dying.expect(T.JOB_ASSIGN)
            dying.close()
        local = Peer(f"unix:{unix}")
        client.send(T.SUBMIT_JOB_BG, "mine", "", "x")
        client.expect(T.JOB_CREATED)
        local.send(T.CAN_DO_TIMEOUT, "mine", "1")
        local.send(T.GRAB_JOB)
        local.expect(T.JOB_ASSIGN)

        def lines(text: str) -> list[str]:
            return [line for line in log.read_text().splitlines() if text in line]

        wait_for("the local worker's timeout", lambda: lines("(mine) timed out"))
        wait_for("30 poison jobs", lambda: client.admin("show poison jobs").count("\tdies\t") == 30)
        assert len(lines("(slow) timed out")) == 1, lines("timed out")
        assert len(lines("poison job")) == 1, lines("poison job")
    finally:
        srv.stop()
