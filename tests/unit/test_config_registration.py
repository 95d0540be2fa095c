"""farm.toml's rules on where a pool's workers register: a reserved farm.* pool only on the
local server's Unix socket (and only with farm's Executor target or a wrapper of it, never a
plain worker or a command), and [supervisor] servers never naming the local server itself
(its listen addresses, this host's loopback and interface addresses beside a listener on
every address).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from farm import config
from farm.config.defaults import PLAIN_WORKERS
from farm.config.rules import _of_this_host, on_running_farm
from tests.helpers import ROOT
from tests.helpers.configs import GOOD, error_of, write

RESERVED = """
[supervisor]
control = "/tmp/farm-test/control.sock"
{supervisor}

[server]
listen = {listen}
store = "none"

[functions.rev]
target = "workers.hashing:compress"
workers = 1

[functions.calls]
target = "farm.executor.call:run_call"
workers = 1
function = "farm.python"
"""


def reserved(supervisor: str, listen: str) -> str:
    return RESERVED.format(supervisor=supervisor, listen=listen)


def test_a_farm_pool_registers_only_on_the_local_unix_socket(tmp_path: Path) -> None:
    body = reserved(
        'local_server = true\nservers = ["10.0.0.5:4730", "unix:/run/other.sock"]',
        '["127.0.0.1:4999", "unix:run/gearman.sock"]',
    )
    cfg = config.load(write(tmp_path, body))
    sock = f"unix:{tmp_path}/run/gearman.sock"
    normal, calls = cfg.functions["rev"], cfg.functions["calls"]
    assert not normal.reserved and calls.reserved  # by what it serves, not its table's name
    assert cfg.servers_for(normal) == (sock, "10.0.0.5:4730", "unix:/run/other.sock")
    assert cfg.servers_for(calls) == (sock,)  # never TCP, never another server


def test_without_a_local_server_a_farm_pool_keeps_to_unix_servers(tmp_path: Path) -> None:
    body = reserved('servers = ["10.0.0.5:4730", "unix:/run/other.sock"]', '["127.0.0.1:4999"]')
    cfg = config.load(write(tmp_path, body))
    assert cfg.servers_for(cfg.functions["rev"]) == ("10.0.0.5:4730", "unix:/run/other.sock")
    assert cfg.servers_for(cfg.functions["calls"]) == ("unix:/run/other.sock",)


@pytest.mark.parametrize(
    ("supervisor", "listen", "key", "fix"),
    [
        ('servers = ["10.0.0.5:4730"]', '["127.0.0.1:4999"]', "supervisor.servers", "unix:/path"),
        ("local_server = true", '["127.0.0.1:4999"]', "server.listen", "unix:RUN/gearman.sock"),
    ],
)
def test_a_farm_pool_with_no_unix_socket_to_use_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    supervisor: str,
    listen: str,
    key: str,
    fix: str,
) -> None:
    # The socket it suggests is farm's default, which this user may create: it said
    # /run/farm/gearman.sock, root's, on which a user's next `farm up` failed again.
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    fix = fix.replace("RUN", f"{tmp_path}/farm")
    message = error_of(tmp_path, reserved(supervisor, listen))
    assert f": {key}: the calls pool is served only over a Unix socket" in message
    assert fix in message


def test_a_command_pool_may_not_serve_a_farm_function(tmp_path: Path) -> None:
    body = GOOD + '\n[functions.php]\ncommand = ["php", "w.php"]\nfunction = "farm.python"\n'
    message = error_of(tmp_path, body)
    assert ": functions.php: command workers connect over TCP" in message


def test_a_farm_pool_may_not_run_a_plain_worker(tmp_path: Path) -> None:
    # farm.python served by one of farm's plain workers passed: every farm.Executor call
    # then failed with "SignatureError: the result payload is not signed (no farm header)".
    body = GOOD + '\n[functions."farm.python"]\ntarget = "workers.text:reverse"\n'
    message = error_of(tmp_path, body)
    assert ": functions.farm.python.target: farm.python is a reserved farm.* function" in message
    assert "workers.text:reverse, one of farm's plain workers, would answer unsigned" in message
    assert 'set target = "farm.executor.call:run_call" (or a function of your own' in message
    # by what it serves, not the table's name; the old target's shim still runs it
    named = GOOD + '\n[functions.calls]\ntarget = "workers.text:reverse"\nfunction = "farm.x"\n'
    assert ": functions.calls.target: farm.x is a reserved" in error_of(tmp_path, named)
    shim = GOOD + '\n[functions."farm.python"]\ntarget = "farm.executor_worker:run_call"\n'
    assert config.load(write(tmp_path, shim)).functions["farm.python"].reserved


def test_a_farm_pool_may_run_a_wrapper_of_the_executors_target(tmp_path: Path) -> None:
    # A site's wrapper (its set-up, then farm.executor.call.run_call) signs its results as
    # the Executor's own target does, and served (tests/integration/test_executor_farm_up.py);
    # the rule that only farm.executor.call:run_call might serve farm.* refused it, and a
    # reload of a farm that ran it.
    wrapper = '\n[functions."farm.python"]\ntarget = "tests.helpers.executorwrap:run_call"\n'
    path = write(tmp_path, GOOD + wrapper)
    cfg = config.load(path)
    assert cfg.functions["farm.python"].target == "tests.helpers.executorwrap:run_call"
    assert on_running_farm(config.load(path), cfg).functions["farm.python"].reserved


def test_the_plain_workers_are_those_farm_ships() -> None:
    # A worker module added to workers/ is one that cannot serve farm.* either.
    shipped = {f"workers.{p.stem}" for p in (ROOT / "workers").glob("*.py") if p.stem != "__init__"}
    assert set(PLAIN_WORKERS) == shipped


LOCAL = "127.0.0.1:4999"
TWIN = " (a listener on 127.0.0.1 holds [::1] at its port as well)"


@pytest.mark.parametrize(
    ("servers", "listen", "said"),
    [
        (f'["{LOCAL}"]', LOCAL, f"{LOCAL} is the local server's listen address {LOCAL}"),
        # localhost is 127.0.0.1 too
        (
            '["localhost:4999"]',
            LOCAL,
            f"localhost:4999 is the local server's listen address {LOCAL}",
        ),
        # one address written two ways: IPv4-mapped IPv6 is 127.0.0.1
        (
            '["[::ffff:127.0.0.1]:4999"]',
            LOCAL,
            f"[::ffff:127.0.0.1]:4999 is the local server's listen address {LOCAL}",
        ),
        (
            '["10.0.0.5:4730", "[::1]:4999"]',
            LOCAL,
            f"[::1]:4999 is the local server's listen address {LOCAL}{TWIN}",
        ),
        # every address: this host's 127.0.0.1 among them
        (
            f'["{LOCAL}"]',
            "0.0.0.0:4999",
            f"{LOCAL} is the local server's listen address 0.0.0.0:4999",
        ),
        (
            '["unix:run/../run/gearman.sock"]',
            "unix:run/gearman.sock",
            "unix:TMP/run/../run/gearman.sock is the local server's listen address"
            " unix:TMP/run/gearman.sock",
        ),
    ],
)
def test_servers_may_not_name_the_local_server(
    tmp_path: Path, servers: str, listen: str, said: str
) -> None:
    # Each worker registered with the local server twice: WORKERS 2 in `farm status` for
    # one process.
    text = GOOD.replace("servers = []", f"servers = {servers}\nlocal_server = true")
    text = text.replace(f'"{LOCAL}", "unix:run/gearman.sock"', f'"{listen}"')
    message = error_of(tmp_path, text)
    said = said.replace("TMP", str(tmp_path))
    assert f": supervisor.servers: {said}; remove it: the workers reach the local server" in (
        message
    ), message


@pytest.mark.parametrize(
    ("servers", "listen"),
    [
        ('["127.0.0.1:4998"]', LOCAL),  # another port
        ('["10.0.0.5:4999"]', LOCAL),  # another host at the same port
        ('["192.0.2.7:4999"]', "0.0.0.0:4999"),  # TEST-NET-1: no host's own address
        ('["unix:/run/other.sock"]', LOCAL),
    ],
)
def test_servers_beside_the_local_server_stay(tmp_path: Path, servers: str, listen: str) -> None:
    text = GOOD.replace("servers = []", f"servers = {servers}\nlocal_server = true")
    cfg = config.load(write(tmp_path, text.replace(LOCAL, listen)))
    assert cfg.supervisor.servers == tuple(servers.strip("[]").replace('"', "").split(", "))


def _interface_address() -> str:
    """One address on this host's interfaces that is not loopback (IPv4 first)."""
    found = [
        nic.address.partition("%")[0]
        for nics in psutil.net_if_addrs().values()
        for nic in nics
        if nic.family in (socket.AF_INET, socket.AF_INET6)
    ]
    found = [ip for ip in found if not ipaddress.ip_address(ip).is_loopback]
    if not found:
        pytest.skip("this host has no address but loopback")
    return min(found, key=lambda ip: ":" in ip)


def test_this_hosts_interface_address_beside_every_address_is_refused(tmp_path: Path) -> None:
    # Its own address at the port of a listener on 0.0.0.0 (or ::) is the local server.
    ip = _interface_address()
    host = f"[{ip}]" if ":" in ip else ip
    every = "[::]:4999" if ":" in ip else "0.0.0.0:4999"
    text = GOOD.replace("servers = []", f'servers = ["{host}:4999"]\nlocal_server = true')
    message = error_of(tmp_path, text.replace(LOCAL, every))
    assert f": supervisor.servers: {host}:4999 is the local server's listen address {every}" in (
        message
    ), message


def test_this_host_is_its_interfaces_addresses_not_what_binds() -> None:
    # By bind((ip, 0)) every address was this host's where net.ipv4.ip_nonlocal_bind=1
    # (keepalived's, haproxy's floating addresses): another host's server was refused.
    assigned = frozenset({"192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1"})
    assert not _of_this_host(frozenset({"192.0.2.7", "remote.example"}), assigned)
    assert _of_this_host(frozenset({"192.0.2.2"}), assigned)
    assert _of_this_host(frozenset({"::ffff:192.0.2.2"}), assigned)  # one address, two ways
    assert _of_this_host(frozenset({"fe80::fc:ff:fe00:1%eth0"}), assigned)  # its zone aside
    assert _of_this_host(frozenset({"127.0.0.2"}), frozenset())  # loopback, on no list
    assert _of_this_host(frozenset({"::1"}), frozenset())


_NONLOCAL = """
import sys
from farm import config
cfg = config.load(sys.argv[1])
print(cfg.supervisor.servers)
"""


def test_a_remote_server_stays_where_every_address_binds(tmp_path: Path) -> None:
    # The host as keepalived leaves it: ip_nonlocal_bind=1, in a network namespace of its own.
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare -n to set net.ipv4.ip_nonlocal_bind")
    text = GOOD.replace("servers = []", 'servers = ["192.0.2.7:4999"]\nlocal_server = true')
    path = write(tmp_path, text.replace(LOCAL, "0.0.0.0:4999"))
    script = 'echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind && exec "$@"'
    wrap = ["unshare", "-n", "sh", "-c", script, "sh"]
    if subprocess.run([*wrap, "true"], capture_output=True, check=False).returncode:
        pytest.skip("needs root and unshare -n to set net.ipv4.ip_nonlocal_bind")
    code = textwrap.dedent(_NONLOCAL)
    done = subprocess.run(
        [*wrap, sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('192.0.2.7:4999',)"


def test_a_sandbox_that_hides_the_interfaces_leaves_the_config_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A unit's RestrictAddressFamilies= without AF_NETLINK makes getifaddrs fail (EAFNOSUPPORT,
    # seen under a seccomp filter): `farm up` died with a traceback, exit 1, restarted for
    # ever. Only loopback reads as this host's then: another address's entry stays.
    def no_netlink() -> None:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    monkeypatch.setattr(psutil, "net_if_addrs", no_netlink)
    text = GOOD.replace("servers = []", 'servers = ["10.9.8.7:4999"]\nlocal_server = true')
    cfg = config.load(write(tmp_path, text.replace(LOCAL, "0.0.0.0:4999")))
    assert cfg.supervisor.servers == ("10.9.8.7:4999",)
    looped = GOOD.replace("servers = []", 'servers = ["127.0.0.1:4999"]\nlocal_server = true')
    message = error_of(tmp_path, looped.replace(LOCAL, "0.0.0.0:4999"))
    assert "is the local server's listen address 0.0.0.0:4999" in message, message
