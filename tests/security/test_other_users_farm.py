"""Two users, each with their own farm, on one host (a university or CI machine).

The built-in defaults (and any config alike) put each user's Unix socket in their own
runtime directory, but the TCP port is the host's: while alice's farm holds it and bob's
farm is not running, bob's `farm status`, `farm submit`, `farm worker` and farm.Client()
found no socket of his and fell back to the TCP address, alice's farm, with no word. Bob
read her queues as his, sent his jobs' data to her workers, and his `farm worker` served
her jobs. A client still falls back (a farm shared over TCP is a use of it), and says
whose the farm it found is.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.clirun import cli
from tests.helpers.servers import free_port, ipv6_loopback_problem, wait_connectable
from tests.helpers.unprivileged import homeless


@contextlib.contextmanager
def alices_server() -> Iterator[tuple[int, int]]:
    """A farm server of another user's (alice: a uid of her own) on a free port: the port
    and her uid, for as long as the block runs."""
    port = free_port()
    argv = homeless([sys.executable, "-m", "farm.server", "--port", str(port), "--store", "none"])
    alice = int(next(a for a in argv if a.startswith("--reuid=")).split("=")[1])
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, cwd="/", stderr=subprocess.DEVNULL)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
        yield port, alice
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_client_that_falls_back_to_another_users_farm_says_whose_it_is(
    tmp_path: Path,
) -> None:
    with alices_server() as (port, alice):
        # bob's farm, not running: its socket is not there
        config = tmp_path / "farm.toml"
        run = tmp_path / "run"
        run.mkdir(mode=0o700)
        config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{port}", "unix:{run}/gearman.sock"]\n'
            '[supervisor]\nmetrics = "off"\n'
        )
        env = {k: v for k, v in os.environ.items() if k not in _SERVERS_VARIABLES}
        out = cli("status", "--config", str(config), env=env, timeout=60)
        assert out.returncode == 0, out.stderr  # it still reads that farm
        assert f"127.0.0.1:{port} is another user's (uid {alice})" in out.stderr, out.stderr
        assert f"no farm of this user answers at {run}/gearman.sock" in out.stderr, out.stderr


def test_a_client_that_falls_back_to_its_own_users_tcp_farm_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This user's own farm on the port (started from another config, say): no word.
    from farm.discovery import client_servers
    from tests.helpers.servers import start_farm_server

    for name in _SERVERS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    server = start_farm_server()
    try:
        config = tmp_path / "farm.toml"
        config.write_text(f'[server]\nlisten = ["{server.addr}", "unix:{tmp_path}/gearman.sock"]\n')
        assert client_servers(config) == [server.addr]
        assert "another user's" not in caplog.text
    finally:
        server.stop()


_SERVERS_VARIABLES = ("FARM_SERVERS", "GEARMAN_SERVERS", "FARM_CONFIG")


def test_a_server_whose_port_another_user_holds_names_that_user(tmp_path: Path) -> None:
    # bob's `farm up` (its server run with --hints config) on the port alice's farm holds:
    # "another server has it?" left him to find out whose, with no way to see it himself
    # (psutil and ss name no process of another user's).
    with alices_server() as (port, alice):
        mine = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", "none"]
        for hints, fix in (("flags", "use another -p PORT"), ("config", "give [server] listen")):
            out = subprocess.run(
                [*mine, "--hints", hints], cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 1, out.stderr
            said = f"cannot listen on 127.0.0.1:{port}: address already in use (uid {alice}"
            assert said in out.stderr and "another user's" in out.stderr, out.stderr
            assert fix in out.stderr, out.stderr


def test_a_socket_path_another_users_server_left_names_that_user(tmp_path: Path) -> None:
    # A config every user copied names a socket in a shared directory (sticky, as /tmp):
    # alice's server was killed and left its socket there, which bob may neither connect
    # to nor remove. His server said "permission denied (check the -L and --unix
    # addresses)", as if his address were wrong, not hers in his way.
    tmp_path.chmod(0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    path = shared / "gearman.sock"
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(path))  # the test's own user (alice here); closed: no one listens
    left.close()
    path.chmod(0o660)
    argv = [sys.executable, "-m", "farm.server", "-p", str(free_port()), "--store", "none"]
    argv = homeless([*argv, "--unix", str(path), "--hints", "config"])  # bob
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on unix:{path}: permission denied (" in out.stderr, out.stderr
    assert f"uid {os.getuid()}" in out.stderr and "another user's socket" in out.stderr
    assert "give [server] listen another unix: path" in out.stderr, out.stderr
    assert path.exists()  # hers, left as it is


def test_farm_check_warns_of_a_port_another_user_listens_on(tmp_path: Path) -> None:
    # `farm check` said "ok" for bob's file while alice's farm held its port: his `farm up`
    # then stopped at once. It binds nothing, and says whose the port is (a warning: run by
    # root for a farm of another user, the listener may be that config's own farm).
    with alices_server() as (port, alice):
        config = tmp_path / "farm.toml"
        config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{port}", "unix:{tmp_path}/gearman.sock"]\n'
            f'store = "none"\n[supervisor]\nmetrics = "off"\ncontrol = "{tmp_path}/c.sock"\n'
            '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'
        )
        env = {k: v for k, v in os.environ.items() if k not in _SERVERS_VARIABLES}
        out = cli("check", "--config", str(config), env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        said = f"server.listen: 127.0.0.1:{port}: uid {alice}: another user's process listens"
        assert said in out.stderr, out.stderr


def test_ipv6_loopback_taken_by_another_user_names_that_user() -> None:
    # The [::1] twin of a server's port taken by another user's process: psutil gives no
    # pid for it, and the error sent this user to `sudo ss -ltnp`, which they may not run.
    if problem := ipv6_loopback_problem():
        pytest.skip(problem)
    port = free_port()
    with socket.socket(socket.AF_INET6) as theirs:  # the test's user (alice here)
        theirs.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        theirs.bind(("::1", port))
        theirs.listen()
        server = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", "none"]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
        out = subprocess.run(  # bob
            homeless(server), env=env, cwd="/", capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 1, out.stderr
    assert f"by a process of another user (uid {os.getuid()}" in out.stderr, out.stderr


@pytest.mark.timeout(90)
def test_farm_up_whose_metrics_port_another_user_holds_says_whose(tmp_path: Path) -> None:
    # bob's farm on the built-in metrics port alice's farm holds: "cannot serve on
    # 127.0.0.1:9730 ([Errno 98] Address already in use)", and his Prometheus went on
    # scraping her numbers as his. The warning (and `farm ps --json`) now says whose it is.
    from tests.helpers.farmproc import FarmUp

    up = FarmUp(tmp_path, "", start=False)
    code = (
        "import socket, sys\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {up.metrics_port})); s.listen()\n"
        "print('up', flush=True); sys.stdin.read()\n"
    )
    argv = homeless([sys.executable, "-c", code])
    alice = int(next(a for a in argv if a.startswith("--reuid=")).split("=")[1])
    theirs = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert theirs.stdout is not None and theirs.stdout.readline() == "up\n"
        up.start()
        up.expect_notify("READY=1")
        said = f"uid {alice}: another user's process listens there"
        assert said in up.ask({"cmd": "ps"})["metrics_error"]
        assert said in up.read_log()
    finally:
        up.stop()
        theirs.kill()
        theirs.wait(10)


def test_another_users_listener_on_another_loopback_address_is_not_named() -> None:
    # Any user may bind 127.0.0.2: a listener there was taken for one on 127.0.0.1, and
    # farm check, the server's refusal and a client's fallback named that user for a port
    # they did not hold (or blamed them for this user's own stale process).
    from farm.loopback import another_users_listener

    port = free_port()
    code = (
        "import socket, sys, time\n"
        "s = socket.socket()\n"
        f"s.bind(('127.0.0.2', {port}))\n"
        "s.listen()\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {"PATH": os.environ["PATH"]}
    argv = homeless([sys.executable, "-c", code])
    proc = subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        assert another_users_listener("127.0.0.2", port) is not None  # there, it is theirs
        assert another_users_listener("127.0.0.1", port) is None
        assert another_users_listener("localhost", port) is None
    finally:
        proc.kill()
        proc.wait(10)
