"""Addresses end to end: the server's flags, `farm status` over IPv6, the supervisor's probe.

Regressions: `farm server -L 127.0.0.1:abc` died with a traceback, and
`farm status -s [::1]:4730` failed with "Name or service not known".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from farm import protocol as p
from farm.client.admin import admin_query
from farm.config import ServerConfig
from farm.net import connect
from farm.pools.localserver import LocalServer
from farm.server.options import parse_args
from tests.helpers import ROOT
from tests.helpers.servers import Server, free_ports, ipv6_loopback_problem, start_farm_server
from tests.helpers.waiting import wait_for


def farm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m farm.cli ARGS`, as a user runs `farm ARGS`."""
    cmd = [sys.executable, "-m", "farm.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["-L", "127.0.0.1:abc"], "-L 127.0.0.1:abc: port must be a number from 1 to 65535"),
        (["-L", "127.0.0.1:0"], "-L 127.0.0.1:0: port must be a number from 1 to 65535"),
        (["--listen", "[::1"], "-L [::1: has '[' without ']'"),
        (["-L", "::1:xyz"], "-L ::1:xyz: an IPv6 address with a port takes brackets"),
        (["-L", "unix:"], "-L unix:: names no socket path"),
        (["-p", "abc"], "-p abc: port must be a number from 1 to 65535"),
    ],
)
def test_a_bad_listen_address_is_one_usage_line_and_exit_2(args: list[str], line: str) -> None:
    out = farm("server", *args, "--store", "none", "-l", "none")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr  # one line, not argparse's screenful
    assert out.stderr.startswith(f"farm server: {line}"), out.stderr
    assert "usage:" in out.stderr


def test_python_m_farm_server_names_itself_in_the_same_one_line() -> None:
    cmd = [sys.executable, "-m", "farm.server", "-L", "127.0.0.1:abc", "--store", "none"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith("python -m farm.server: -L 127.0.0.1:abc: port must be")


def test_port_flag_applies_to_listen_hosts_without_a_port_as_in_gearmand() -> None:
    opts = parse_args(["-p", "5000", "-L", "10.0.0.5", "-L", "[::1]:6000", "-L", "unix:/s"])
    assert opts.port == 5000
    assert opts.listen == ["10.0.0.5:5000", "[::1]:6000"]
    assert opts.unix == ["/s"]
    assert parse_args([]).listen == ["127.0.0.1:4730"]
    assert parse_args(["-p", "5001"]).listen == ["127.0.0.1:5001"]


def free_ipv6_port() -> int:
    return free_ports(1, "::1")[0]


def answers_getpid(addr: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the server exited with {proc.returncode} before accepting")
    try:
        return admin_query(addr, "getpid", timeout=1).strip() == f"OK {proc.pid}"
    except OSError:
        return False


@pytest.fixture
def ipv6_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A farm server started with gearmand's `-p PORT -L ::1`; its address as "[::1]:PORT"."""
    problem = ipv6_loopback_problem()
    if problem:
        pytest.skip(problem)
    for _attempt in range(5):  # another process may take the free port before the server does
        port = free_ipv6_port()
        cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "-L", "::1"]
        proc = subprocess.Popen([*cmd, "--store", "none", "-l", "none"], cwd=ROOT)
        addr = f"[::1]:{port}"
        try:
            wait_for(f"the server on {addr}", partial(answers_getpid, addr, proc))
            break
        except RuntimeError:
            proc.wait()
    else:
        pytest.fail("the server did not start on a free IPv6 port")
    try:
        yield addr, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_farm_status_reads_a_server_on_the_ipv6_loopback(
    ipv6_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    addr, _ = ipv6_server
    with connect(addr, timeout=10) as worker:
        worker.sendall(p.encode_req(p.PacketType.CAN_DO, b"rev"))
        # The echo comes back after CAN_DO is done: the status below must count this worker.
        worker.sendall(p.encode_req(p.PacketType.ECHO_REQ, b"sync"))
        decoder = p.Decoder(allow_admin=False)
        packets: list[object] = []
        while not packets:
            packets.extend(decoder.feed(worker.recv(4096)))
        assert isinstance(packets[0], p.Packet) and packets[0].type == p.PacketType.ECHO_RES
        out = farm("status", "-s", addr, "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["functions"] == [{"function": "rev", "queued": 0, "running": 0, "workers": 1}]
        table = farm("status", "--server", addr)
        assert table.returncode == 0, table.stderr
        assert table.stdout.splitlines()[1].split() == ["rev", "0", "0", "1"]


def test_farm_status_refuses_a_bad_server_address_in_one_line() -> None:
    out = farm("status", "-s", "[::1]:abc")
    assert out.returncode == 2
    assert out.stderr == (
        "farm: --server [::1]:abc: port must be a number from 1 to 65535"
        " (usage: farm status --help)\n"
    )
    env = {**os.environ, "GEARMAN_SERVERS": "127.0.0.1:abc"}
    cmd = [sys.executable, "-m", "farm.cli", "status"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("farm: $GEARMAN_SERVERS: server address '127.0.0.1:abc': port")
    # A blank $FARM_SERVERS is unset: the bad address is $GEARMAN_SERVERS', and said so.
    env["FARM_SERVERS"] = " "
    for command in (["status"], ["submit", "f", "x"]):
        run = [*cmd[:-1], *command]
        out = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 2, command
        assert out.stderr.startswith("farm: $GEARMAN_SERVERS: server address '127.0.0.1:abc'")


def local_server(*listen: str) -> LocalServer:
    return LocalServer(ServerConfig(listen=listen, store="none", job_retries=0), {})


def test_local_server_argv_takes_its_port_from_the_listen_address() -> None:
    argv = local_server("[::1]:5000", "unix:/run/g.sock").argv()
    assert argv[argv.index("--port") + 1] == "5000"
    opts = parse_args(argv[argv.index("farm.server") + 1 :])  # what the server will make of it
    assert (opts.port, opts.listen, opts.unix) == (5000, ["[::1]:5000"], ["/run/g.sock"])
    assert "--port" not in local_server("unix:/run/g.sock").argv()


def test_local_server_accepts_only_its_own_pid_over_tcp(farm_server: Server) -> None:
    for listened in (f"127.0.0.1:{farm_server.port}", f":{farm_server.port}"):  # ":" = wildcard
        ours = local_server(listened)
        ours.pid = farm_server.proc.pid
        assert ours.accepts(), listened
        other = local_server(listened)
        other.pid = farm_server.proc.pid + 1  # a server of someone else holds the port
        assert not other.accepts(), listened


def test_local_server_accepts_over_unix_and_not_where_nothing_listens(tmp_path: Path) -> None:
    path = str(tmp_path / "g.sock")
    srv = start_farm_server(unix=path)
    try:
        ours = local_server(f"unix:{path}")
        ours.pid = srv.proc.pid
        assert ours.accepts()
    finally:
        srv.stop()
    assert not ours.accepts()  # the socket is gone with its server
