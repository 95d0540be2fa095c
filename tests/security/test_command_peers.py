"""What a local user's TCP workers can make the supervisor's questions about command
workers cost (farm.pools.commandjobs).

The supervisor asks the local server's farm-only ``peers`` on the Unix socket every 0.1 s
while a command worker drains and every 0.5 s for a pool with a ``timeout``, and waits
0.5 s for the answer. The listing named every worker connection with every function it
registered: 134 MB for 64 TCP connections of 4,096 names of 512 bytes, which any local
user may hold (--max-tcp-abilities), 1.6 s of the server's loop to make here. Every ask
then timed out: `farm ps` showed no command worker's job in hand, a pool's ``timeout``
was never applied, and a drained `gearman -w` got its stop signal at once ("the job
server does not answer"), its job in hand killed. The supervisor now names the
connections it asks about, and the server lists those alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from farm import protocol as p
from farm.client.admin import admin_query
from farm.pools.peerlist import peers_queries
from farm.protocol import PacketType as T
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.peers import Peer
from tests.helpers.servers import need, start_farm_server
from tests.helpers.streams import call_in_thread
from tests.helpers.waiting import wait_for


def hold_names(addr: str, peer_factory: Callable[[str], Peer], connections: int) -> None:
    """4,096 registrations of 512-byte names on each of ``connections`` TCP workers."""
    for c in range(connections):
        hog = peer_factory(addr)
        names = (b"%03d%05d" % (c % 8, i) + b"f" * 504 for i in range(4096))
        hog.send_raw(b"".join(p.encode_req(T.CAN_DO, name) for name in names))
        hog.send(T.ECHO_REQ, "sync")
        hog.expect(T.ECHO_RES, timeout=120)


def test_peers_naming_connections_lists_those_alone(
    peer_factory: Callable[[str], Peer], unix_sock: str
) -> None:
    srv = start_farm_server(unix=unix_sock)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        hold_names(srv.addr, peer_factory, 1)
        mine = peer_factory(f"unix:{unix_sock}")
        mine.send(T.CAN_DO, "mine")
        mine.send(T.ECHO_REQ, "sync")
        mine.expect(T.ECHO_RES)
        everyone = admin_query(f"unix:{unix_sock}", "peers", timeout=30)
        assert len(everyone.splitlines()) == 3, "the hog's row, this test's, and the end"
        named = admin_query(f"unix:{unix_sock}", f"peers pid:{os.getpid()} tcp:1", timeout=30)
        fd = named.split(chr(9))[1]
        assert named == f"pid:{os.getpid()}\t{fd}\t0\t0\t-\t-\t-\t-\t0\tmine\n.\n"
        assert admin_query(f"unix:{unix_sock}", "peers pid:x", timeout=30).startswith("ERR")
    finally:
        srv.stop()


def test_many_names_are_asked_in_lines_the_server_takes() -> None:
    names = [f"tcp:127.0.0.1:{port}" for port in range(10000, 12000)]
    queries = peers_queries(names)
    assert len(queries) > 1 and all(len(q) <= p.MAX_ADMIN_LINE - 2 for q in queries)
    assert [n for q in queries for n in q.split()[1:]] == names
    assert all(q.startswith("peers ") for q in queries)
    assert peers_queries([]) == []


@pytest.mark.serial  # the server's time: 134 MB of registrations, and listings of them
@pytest.mark.timeout(240)
def test_a_drained_command_worker_keeps_its_job_beside_a_users_many_registrations(
    tmp_path: Path, peer_factory: Callable[[str], Peer]
) -> None:
    need("gearman")
    up = FarmUp(tmp_path, "", start=False)
    gate, runs = tmp_path / "go", tmp_path / "runs"
    script = f"echo run >> {runs}; until [ -e {gate} ]; do sleep 0.05; done; cat"
    up.write_config(f"""
        [functions.slow]
        command = ["gearman", "-w", "-h", "127.0.0.1", "-p", "{up.port}", "-f", "slow",
                   "--", "sh", "-c", "{script}"]
        workers = 1
        graceful_timeout = 60
        """)
    up.start()
    try:
        up.expect_notify("READY=1")
        worker = wait_for("a running gearman worker", lambda: up.workers("slow", "running"), 20)[0]
        hold_names(up.addr, peer_factory, 63)  # with the worker's, near --max-tcp-abilities
        thread, result = call_in_thread(up.addr, "slow", "payload", timeout=120)
        wait_for("the job started", runs.exists, 20)
        busy = wait_for(
            "the job in hand in farm ps", lambda: [r for r in up.workers("slow") if r["job"]], 20
        )
        assert busy[0]["pid"] == worker["pid"]
        assert farm_cli("scale", "slow=0", "--control", up.control).returncode == 0
        draining = [r for r in up.workers("slow") if r["state"] == "draining"]
        wait_for("the worker draining", lambda: draining or up.workers("slow", "draining"), 20)
        gate.touch()
        thread.join(60)
        assert result == [b"payload"], result
        wait_for("the worker gone", lambda: not psutil.pid_exists(worker["pid"]), 20)
        assert runs.read_text() == "run\n"  # ran once: its worker was not stopped mid-job
        log = up.read_log()
        assert "does not answer" not in log and "killing worker" not in log, log
    finally:
        assert up.stop() == 0
