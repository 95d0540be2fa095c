"""localhost's other address: a server on 127.0.0.1 also holds [::1] on its port.

On a host whose /etc/hosts names `::1 localhost` (Debian's and Ubuntu's do), a client of
`localhost` tries [::1] first: libgearman's default server (PHP's `addServer()`, `gearman`,
`gearadmin`) and `farm submit --server localhost:PORT`. farm listened on 127.0.0.1 alone,
so any local user could listen on [::1] at the farm's port and receive those clients'
jobs, and answer them. gearmand holds both (its default, every address; Debian's
`--listen=localhost`, both loopbacks).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import config
from farm.client.admin import admin_query
from farm.pools.metricsendpoint import serve_metrics
from farm.supervisor import Supervisor
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import (
    Server,
    free_ports,
    ipv6_loopback_problem,
    start_farm_server,
    wait_connectable,
)


@contextlib.contextmanager
def squatting(port: int) -> Iterator[None]:
    """Another program listening on [::1] at ``port`` meanwhile (a Node dev server, or
    another local user); ``port`` from free_ports, so free there until now."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as squatter:
        squatter.bind(("::1", port))
        squatter.listen()
        yield


def files_over(binds: dict[str, Path], why: str) -> list[str]:
    """The start of a command line that runs its command with each file bound over the
    system file named (in a mount namespace of its own: the host's stay as they are);
    skipped, saying ``why``, where that cannot be done."""
    mounts = " && ".join(f'mount --bind "${i}" {target}' for i, target in enumerate(binds, 1))
    script = f'{mounts} && shift {len(binds)} && exec "$@"'
    wrap = ["unshare", "-m", "sh", "-c", script, "sh", *map(str, binds.values())]
    if os.getuid() != 0 or subprocess.run([*wrap, "true"], capture_output=True).returncode:
        pytest.skip(f"needs root and unshare -m {why}")
    return wrap


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
    port = free_ports(1)[0]  # free on [::1] too (tests.helpers.servers)
    with squatting(port):
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


def test_a_listener_on_ipv6_loopback_at_another_port_leaves_the_twin_in_place() -> None:
    # Any [::1] listener turned the twin off: with -L [::1]:Q beside -L 127.0.0.1:P,
    # [::1]:P (where clients of localhost:P go first) was free to squat.
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    port, other = free_ports(2)
    srv = start_farm_server("-L", f"127.0.0.1:{port}", "-L", f"[::1]:{other}", port=port)
    try:
        for where in (f"[::1]:{port}", f"[::1]:{other}"):
            assert admin_query(where, "getpid", timeout=10) == f"OK {srv.proc.pid}\n", where
    finally:
        srv.stop()


def test_ipv6_loopback_at_the_same_port_is_listened_on_once() -> None:
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    port = free_ports(1)[0]
    srv = start_farm_server("-L", f"127.0.0.1:{port}", "-L", f"[::1]:{port}", port=port)
    try:
        assert admin_query(f"[::1]:{port}", "getpid", timeout=10) == f"OK {srv.proc.pid}\n"
    finally:
        srv.stop()


def test_the_error_for_a_taken_ipv6_loopback_says_who_and_what_to_do() -> None:
    # It said "cannot listen on [::1]:P (localhost's IPv6 address): address already in use
    # (clients of `localhost` would reach its owner)": no fix, where a port taken says
    # "use another -p PORT" (and a Node dev server, which binds [::1] alone, is the owner).
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    port = free_ports(1)[0]  # free on [::1] too (tests.helpers.servers)
    with squatting(port):
        for hints, fix in (("flags", "use another -p PORT"), ("config", "give [server] listen")):
            argv = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", "none"]
            run = subprocess.run(
                [*argv, "--hints", hints], cwd=ROOT, capture_output=True, text=True, timeout=30
            )
            err = run.stderr
            assert run.returncode == 1, err
            assert f"[::1]:{port}" in err and "already in use" in err, err
            assert f"127.0.0.1:{port}" in err, err  # what it was held beside
            assert f"pid {os.getpid()}" in err, err  # who holds it: this test
            assert "stop it" in err and fix in err, err
            assert len(err.strip().splitlines()) == 1, err


#: `python -m farm.server` on a host without IPv6 (a kernel booted with ipv6.disable=1,
#: where no AF_INET6 socket can be made) and without uvloop (plain asyncio).
NO_IPV6_SERVER = """
import errno, socket, sys

def no_ipv6(event, args):
    if event == "socket.__new__" and args[1] == socket.AF_INET6:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

sys.addaudithook(no_ipv6)
sys.modules["uvloop"] = None  # its import fails: the server runs on asyncio's own loop
from farm.server.app import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_host_without_ipv6_runs_on_127_0_0_1_alone_and_says_so(tmp_path: Path) -> None:
    # asyncio's create_server("::1") there skipped the family it could not make and
    # returned a server with no socket: the log said "listening on [::1]:P" of nothing.
    port = free_ports(1)[0]
    log = tmp_path / "server.log"
    argv = [sys.executable, "-c", NO_IPV6_SERVER, "-p", str(port), "--store", "none", "-vvv"]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stderr=out, stdout=out)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
        assert admin_query(f"127.0.0.1:{port}", "getpid", timeout=10) == f"OK {proc.pid}\n"
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert f"listening on 127.0.0.1:{port}" in text, text
    assert "::1" not in text, text


def test_the_servers_metrics_endpoint_holds_ipv6_loopback_too() -> None:
    # Prometheus or `curl localhost:PORT/metrics` try [::1] first: another user listening
    # there served them numbers of their choosing (no alert fires).
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    port, metrics = free_ports(2)
    srv = start_farm_server("--metrics", f"127.0.0.1:{metrics}", port=port)
    try:
        with urllib.request.urlopen(f"http://[::1]:{metrics}/metrics", timeout=10) as reply:
            assert b"farm_jobs_submitted" in reply.read()
    finally:
        srv.stop()


def test_a_server_whose_metrics_port_is_taken_on_ipv6_loopback_does_not_start() -> None:
    # As its metrics port taken on 127.0.0.1 does: --metrics asked for them, and a scrape
    # of localhost would read another's numbers.
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    port, metrics = free_ports(2)
    with squatting(metrics):
        argv = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", "none"]
        argv += ["--metrics", f"127.0.0.1:{metrics}"]
        run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    err = run.stderr
    assert run.returncode == 1, err
    assert f"[::1]:{metrics}" in err and "already in use" in err, err
    assert "give --metrics another HOST:PORT" in err and f"pid {os.getpid()}" in err, err


POOLS = """
[functions.alpha]
target = "tests.helpers.monitored:work"
workers = 1
"""


@pytest.mark.timeout(90)
def test_farm_ups_metrics_are_served_on_ipv6_loopback_too(tmp_path: Path) -> None:
    # `[supervisor] metrics` (127.0.0.1:9730 by default) had no twin: Prometheus, `curl
    # localhost:9730` and `farm top --metrics localhost:9730` went to [::1] first, where
    # another user could serve numbers of their choosing (no alert fires).
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        url = f"http://[::1]:{up.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert b"farm_pool_target_workers" in reply.read()
        assert up.stop() == 0  # the twin's thread stopped with it
    finally:
        up.stop()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as after:
        after.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        after.bind(("::1", up.metrics_port))  # let go: no listener left there
        after.listen()


@pytest.mark.timeout(90)
def test_farm_up_with_its_metrics_port_taken_on_ipv6_loopback_warns_and_serves_127(
    tmp_path: Path,
) -> None:
    # A warning, as the metrics port taken is: the farm's numbers stay on 127.0.0.1, and
    # the warning says who holds [::1] and what to do.
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    up = FarmUp(tmp_path, POOLS, start=False)
    with squatting(up.metrics_port):
        up.start()
        try:
            up.expect_notify("READY=1")
            with urllib.request.urlopen(up.metrics_url, timeout=10) as reply:
                assert b"farm_pool_target_workers" in reply.read()
            log = up.read_log()
            (line,) = [ln for ln in log.splitlines() if f"[::1]:{up.metrics_port}" in ln]
            assert "WARNING" in line and "already in use" in line.lower(), line
            assert f"pid {os.getpid()}" in line, line
            assert "give [supervisor] metrics another port" in line, line
        finally:
            up.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_supervisors_metrics_hold_both_loopbacks_until_shut_down(
    tmp_path: Path, host: str
) -> None:
    # In process, where a twin left serving would show (a farm's process, gone at its stop,
    # hid it). `localhost:P` bound getaddrinfo's first address alone, often [::1] on
    # Debian and Ubuntu, and left 127.0.0.1:P to any local user (or the other way round).
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    (tmp_path / "farm.toml").write_text(
        f'[server]\nstore = "none"\n[supervisor]\ncontrol = "{tmp_path}/c.sock"\nmetrics = "off"\n'
    )
    supervisor = Supervisor(config.load(tmp_path / "farm.toml"))
    before = set(threading.enumerate())
    try:
        server = serve_metrics(supervisor, f"{host}:0")
        port = server.server_address[1]
        for family, ip in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.connect((ip, port))
        serving = [t for t in set(threading.enumerate()) - before if t.name.startswith("metrics")]
        # One a loopback, whichever of them /etc/hosts lists first for localhost (the second
        # is "metrics-ipv6" or "metrics-127.0.0.1"): both answered above.
        assert len(serving) == 2, [t.name for t in serving]
        server.shutdown()
        server.server_close()
        for thread in serving:
            thread.join(10)
            assert not thread.is_alive(), thread.name
        for family, ip in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with (
                socket.socket(family, socket.SOCK_STREAM) as probe,
                pytest.raises(ConnectionRefusedError),
            ):
                probe.connect((ip, port))
    finally:
        supervisor.selector.close()


def test_the_supervisors_metrics_on_localhost_hold_each_of_its_addresses(tmp_path: Path) -> None:
    # Debian's and Ubuntu's /etc/hosts: localhost is [::1] first. getaddrinfo's first alone
    # was bound, and 127.0.0.1 at the port was left to any local user.
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 localhost\n127.0.0.1 localhost\n")
    (tmp_path / "farm.toml").write_text(
        f'[server]\nstore = "none"\n[supervisor]\ncontrol = "{tmp_path}/c.sock"\nmetrics = "off"\n'
    )
    code = (
        "import socket, threading\n"
        "from farm import config\n"
        "from farm.supervisor import Supervisor\n"
        "from farm.pools.metricsendpoint import serve_metrics\n"
        f"server = serve_metrics(Supervisor(config.load({str(tmp_path / 'farm.toml')!r})),"
        " 'localhost:0')\n"
        "for family, ip in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
        "    socket.create_connection((ip, server.server_address[1]), timeout=10).close()\n"
        "print(sorted(t.name for t in threading.enumerate() if t.name.startswith('metrics')))\n"
        "server.shutdown()\n"
        "print([t.name for t in threading.enumerate() if t.name.startswith('metrics')])\n"
    )
    wrap = files_over({"/etc/hosts": hosts}, "to give localhost [::1] first")
    run = subprocess.run(
        [*wrap, sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["['metrics', 'metrics-127.0.0.1']", "[]"], run.stdout


@pytest.mark.timeout(90)
def test_localhost_metrics_with_ipv6_loopback_taken_warn_once_and_say_who(
    tmp_path: Path,
) -> None:
    # localhost is 127.0.0.1 then [::1]: with [::1]:P taken, the loop over its addresses
    # warned "give another port", and the [::1] twin was tried again and warned again.
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
    # glibc sorts [::1] first whatever the order in hosts, unless gai.conf prefers IPv4
    gai = tmp_path / "gai.conf"
    gai.write_text("precedence ::ffff:0:0/96 100\n")
    (tmp_path / "farm.toml").write_text(
        f'[server]\nstore = "none"\n[supervisor]\ncontrol = "{tmp_path}/c.sock"\nmetrics = "off"\n'
    )
    port = free_ports(1)[0]
    code = (
        "import logging, socket\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from farm import config\n"
        "from farm.supervisor import Supervisor\n"
        "from farm.pools.metricsendpoint import serve_metrics\n"
        "squat = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n"
        f"squat.bind(('::1', {port}))\n"
        "squat.listen()\n"
        f"server = serve_metrics(Supervisor(config.load({str(tmp_path / 'farm.toml')!r})),"
        f" 'localhost:{port}')\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=10).close()\n"
        "server.shutdown()\n"
    )
    wrap = files_over(
        {"/etc/hosts": hosts, "/etc/gai.conf": gai}, "to choose localhost's addresses"
    )
    run = subprocess.run(
        [*wrap, sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    (line,) = [ln for ln in run.stderr.splitlines() if f"[::1]:{port}" in ln and "WARN" in ln]
    assert f"clients of `localhost:{port}` would reach it" in line, line
    assert "pid " in line, line  # who holds it: the child itself, squatting
