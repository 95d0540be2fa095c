"""When the supervisor counts a starting command worker as serving: one of its connections
registered one of its pool's functions with the local server (docs/operations.md, "Command
pools"), read from the server's admin `peers` (docs/server.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm import config
from farm.pools.commandjobs import CommandJobs
from farm.pools.slots import WorkerProcess
from farm.protocol import PacketType as T
from farm.supervisor import Supervisor
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

#: Another process's worker: registers ``rev`` on the Unix socket, stays until stdin closes.
OTHER_WORKER = """
import socket, sys
from farm import protocol as p
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(p.encode_req(p.PacketType.CAN_DO, b"rev"))
sys.stdin.read()
"""


class Watching(CommandJobs):
    """The supervisor's reading of command workers against a real server, with ``between``
    run after the first admin query of a poll (what else happens on the server meanwhile)."""

    def __init__(self, cfg: config.Config, between: Callable[[], None]) -> None:
        self.config = cfg
        self.server = SimpleNamespace(pid=1, ready=True)  # type: ignore[assignment]  # its state
        self.retiring = []
        self.by_pid = {}
        self.between = between
        self.asked: list[str] = []

    def ask_server(self, command: str) -> str | None:
        reply = super().ask_server(command)
        self.asked.append(command)
        if len(self.asked) == 1:
            self.between()
        return reply


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    server = start_farm_server(unix=str(tmp_path / "farm.sock"))
    yield server
    server.stop()


def fd_of(admin: Peer, peer: str) -> str | None:
    rows = [line.split("\t") for line in admin.admin("peers")[:-2].splitlines()]
    return next((row[1] for row in rows if row[0] == peer), None)


def rev_pool(tmp_path: Path, srv: Server) -> config.Config:
    path = tmp_path / "farm.toml"
    path.write_text(
        textwrap.dedent(f"""
        [server]
        listen = ["{srv.addr}", "unix:{srv.unix}"]
        store = "none"

        [supervisor]
        control = "{tmp_path / "control.sock"}"

        [functions.rev]
        command = ["/bin/true"]
        workers = 1
        """)
    )
    return config.load(path)


def test_a_connection_closed_between_queries_does_not_credit_its_fds_next_owner(
    srv: Server, tmp_path: Path
) -> None:
    # The supervisor read `peers` (connections by process, and their fds), then `workers`
    # (what each fd registered), and joined them by fd: a worker's connection closed between
    # the two left its fd to another process's, whose registration was credited to the
    # worker, so a deploy counted a worker that served nothing as serving.
    cfg = rev_pool(tmp_path, srv)
    admin = Peer(f"unix:{srv.unix}")  # first: the server's lowest fd is not one in play
    worker = Peer(f"unix:{srv.unix}")  # this process, as the command worker: registers wrong
    worker.send(T.CAN_DO, "wrong")
    worker.send(T.PRE_SLEEP)  # with that alone: all it means to serve
    me = f"pid:{os.getpid()}"
    fd = wait_for("the worker's connection", lambda: fd_of(admin, me))
    others: list[subprocess.Popen[bytes]] = []

    def reuse() -> None:
        worker.sock.close()
        wait_for("its connection gone", lambda: fd_of(admin, me) is None)
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER_WORKER, str(srv.unix)],
            stdin=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        others.append(other)
        # The server gives a new connection its lowest free fd: the worker's.
        assert wait_for("the other's connection", lambda: fd_of(admin, f"pid:{other.pid}")) == fd

    jobs = Watching(cfg, reuse)
    proc = WorkerProcess(os.getpid(), "rev", 0, 0, -1, (), command=True)
    # Seen so at a look long before: final now that it asks (REGISTRATION_SETTLE), were it
    # credited the other's registration it would be new, and "so far".
    proc.registered = (frozenset({"wrong"}), 0.0)
    try:
        assert jobs.serving_commands([proc], time.monotonic()) == []
        assert proc.misregistered == "registered wrong, not rev"
    finally:
        admin.close()
        for other in others:
            assert other.stdin is not None
            other.stdin.close()
            other.wait(10)


def test_a_command_worker_that_never_connects_is_polled_soon_only_at_first(
    srv: Server, tmp_path: Path
) -> None:
    # `command = ["yes", "spam"]` never connects: the loop looked at its sockets (psutil:
    # its process tree, each one's connections) every 20 ms for as long as it ran, ~15% of
    # a core. Past ready_wait it is looked at every LATE_POLL (1 s), on the loop's own turns.
    supervisor = Supervisor(rev_pool(tmp_path, srv))
    silent = subprocess.Popen(["sleep", "60"])
    try:
        proc = WorkerProcess(silent.pid, "rev", 0, 0, -1, (), command=True)
        supervisor.by_pid[proc.pid] = proc
        assert supervisor.watch_commands()  # just started: the loop polls for it soon
        proc.started -= supervisor.config.supervisor.ready_wait  # as if started that long ago
        assert not supervisor.watch_commands()  # looked at now, again in a second
        assert not supervisor.watch_commands()
        assert proc.state.value == "starting"
    finally:
        silent.kill()
        silent.wait()
        supervisor.selector.close()
