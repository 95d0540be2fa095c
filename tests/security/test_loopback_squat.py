"""localhost's other address: a server on 127.0.0.1 also holds [::1] on its port.

On a host whose /etc/hosts names `::1 localhost` (Debian's and Ubuntu's do), a client of
`localhost` tries [::1] first: libgearman's default server (PHP's `addServer()`, `gearman`,
`gearadmin`) and `farm submit --server localhost:PORT`. farm listened on 127.0.0.1 alone,
so any local user could listen on [::1] at the farm's port and receive those clients'
jobs, and answer them. gearmand holds both (its default, every address; Debian's
`--listen=localhost`, both loopbacks).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from farm.client.admin import admin_query
from tests.helpers import ROOT
from tests.helpers.servers import Server, free_ports, start_farm_server


def ipv6_loopback_problem() -> str | None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind the IPv6 loopback [::1]: {exc}"
    return None


@pytest.fixture
def server() -> Iterator[Server]:
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    srv = start_farm_server()
    try:
        yield srv
    finally:
        srv.stop()


def test_the_server_answers_on_the_ipv6_loopback_too(server: Server) -> None:
    assert admin_query(f"[::1]:{server.port}", "getpid", timeout=10) == f"OK {server.proc.pid}\n"
    # and nobody else may listen there meanwhile
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as squatter, pytest.raises(OSError):
        squatter.bind(("::1", server.port))
        squatter.listen()


def test_a_server_whose_ipv6_loopback_port_is_taken_does_not_start() -> None:
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    port = free_ports(1)[0]
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as squatter:
        try:
            squatter.bind(("::1", port))
        except OSError:
            pytest.skip(f"[::1]:{port} is in use here")
        squatter.listen()
        argv = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", "none"]
        proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the server started beside a squatter on localhost's [::1]")
    assert proc.returncode != 0, err
    assert f"[::1]:{port}" in err and "already in use" in err, err
