"""Command workers pointed at remote servers ([supervisor] servers): the supervisor cannot
see what they registered there (only the local server answers `peers`), so one that
connected only to remote servers runs, its registration "not checked", rather than
"starting" for ever (docs/operations.md, "Command pools")."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.pools.commandstart import to_this_host
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

#: A command worker that connects to one of $FARM_SERVERS (the index in argv[1]: 0 is the
#: local server's, -1 the remote one) and registers its pool's function there.
WORKER = """
import os, socket, sys, time
from farm import protocol as p
host, port = os.environ["FARM_SERVERS"].split(",")[int(sys.argv[1])].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
s.sendall(p.encode_req(p.PacketType.CAN_DO, os.environ["FARM_FUNCTION"].encode()))
time.sleep(300)
"""


@pytest.fixture
def remote() -> Iterator[Server]:
    server = start_farm_server()
    yield server
    server.stop()


def farm_with_remote(tmp_path: Path, remote: Server) -> FarmUp:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    functions = f"""
    [functions.far]
    command = ["{sys.executable}", "{script}", "-1"]
    workers = 1

    [functions.near]
    command = ["{sys.executable}", "{script}", "0"]
    workers = 1
    """
    up = FarmUp(tmp_path, functions, start=False)
    # The local server runs too (with servers given it is off unless asked for).
    both = f'[supervisor]\nlocal_server = true\nservers = ["{remote.addr}"]\n'
    up.config.write_text(up.config.read_text().replace("[supervisor]\n", both))
    up.start()
    return up


def test_a_command_worker_of_a_remote_server_runs_unchecked(tmp_path: Path, remote: Server) -> None:
    # It stayed "starting" for ever: the supervisor looked for its registration on the
    # local server only, and a deploy of it waited for what would never come.
    up = farm_with_remote(tmp_path, remote)
    try:
        # Without its registration seen, READY=1 came ready_wait (10 s) after the start, and
        # the worker went on "starting".
        up.expect_notify("READY=1", timeout=30)

        def running() -> list[dict] | None:
            rows = [r for pool in ("far", "near") for r in up.workers(pool, "running")]
            return rows if len(rows) == 2 else None

        far, near = wait_for("both command workers running", running)
        assert (far["function"], far["checked"]) == ("far", False)
        assert (near["function"], near["checked"]) == ("near", True)  # seen on the local server
        table = farm_cli("ps", "--control", up.control).stdout
        (far_line,) = [line for line in table.splitlines() if " far " in line]
        (near_line,) = [line for line in table.splitlines() if " near " in line]
        assert "running (not checked)" in far_line
        assert "running" in near_line and "not checked" not in near_line
        assert "worker far#0 cpu0" in up.read_log()
        assert "serves remote servers only; its registration is not checked" in up.read_log()
        # A deploy goes on the same rule: its successor serves once it connects.
        deploy = farm_cli("restart", "far", "--control", up.control)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        (after,) = up.workers("far", "running")
        assert after["pid"] != far["pid"] and after["checked"] is False
        # Its old process is not drained (the local server holds none of its connections):
        # signalled at once, and the log says so, not "the server hands it no more jobs".
        retired = [line for line in up.read_log().splitlines() if f"(pid {far['pid']})" in line]
        assert not [line for line in retired if "hands it no more jobs" in line], retired
        assert [line for line in retired if "no connection of it to the local server" in line]
    finally:
        assert up.stop() == 0


#: One that dials the remote server first and the local one a moment later, as a worker
#: connecting to all its servers at once may: it registers on both.
DIALS_BOTH = """
import os, socket, time
from farm import protocol as p
conns = []
for index in (-1, 0):
    host, port = os.environ["FARM_SERVERS"].split(",")[index].rsplit(":", 1)
    conns.append(socket.create_connection((host, int(port))))
    conns[-1].sendall(p.encode_req(p.PacketType.CAN_DO, os.environ["FARM_FUNCTION"].encode()))
    time.sleep(0.3)
time.sleep(300)
"""


def test_a_worker_that_reaches_a_remote_server_first_is_checked_on_the_local_one(
    tmp_path: Path, remote: Server
) -> None:
    # One look decided for good: seen connected to the remote server alone, it ran "not
    # checked" for ever, and a deploy counted its successor as serving before it registered
    # on the local server.
    script = tmp_path / "both.py"
    script.write_text(DIALS_BOTH)
    up = FarmUp(
        tmp_path,
        f'[functions.both]\ncommand = ["{sys.executable}", "{script}"]\nworkers = 1\n',
        start=False,
    )
    both = f'[supervisor]\nlocal_server = true\nservers = ["{remote.addr}"]\n'
    up.config.write_text(up.config.read_text().replace("[supervisor]\n", both))
    up.start()
    try:
        up.expect_notify("READY=1", timeout=30)
        (row,) = wait_for("the worker running", lambda: up.workers("both", "running"))
        assert row["checked"] is True, row
    finally:
        assert up.stop() == 0


@pytest.mark.parametrize(
    ("remote_ip", "local_ip", "here"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("::1", "::1", True),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", True),
        ("192.0.2.7", "192.0.2.7", True),  # to this host's own address
        ("192.0.2.9", "192.0.2.7", False),  # another host on the local server's port
    ],
)
def test_a_connection_to_the_local_servers_port_elsewhere_is_remote(
    remote_ip: str, local_ip: str, here: bool
) -> None:
    assert to_this_host(remote_ip, local_ip) is here
