"""farm.toml's [supervisor] keys and pool sizes: cpus (taskset's syntax), timeouts, the control
socket, worker counts and memory, and where reserved farm.* pools may register.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from farm import config
from farm.config.capacity import cpu_list
from farm.config.defaults import PLAIN_WORKERS
from farm.config.pooltables import PoolReader
from farm.config.rules import _of_this_host, on_running_farm
from farm.errors import ConfigError
from tests.helpers import ROOT
from tests.helpers.configs import GOOD, error_of, write


def test_auto_follows_the_cpu_list_not_the_machine(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:1]
    cfg = config.load(write(tmp_path, GOOD.replace('cpus = "all"', f"cpus = {cpus}")))
    assert cfg.supervisor.cpus == tuple(cpus)
    assert cfg.functions["hash"].workers == 1


def test_cpus_takes_ranges_as_taskset_writes_them(tmp_path: Path) -> None:
    # On a 16-core box operators write "2-15" or "0-3,8-11": it was refused, a list wanted.
    allowed = sorted(os.sched_getaffinity(0))
    text = f'"{allowed[0]}-{allowed[-1]}"' if len(allowed) > 1 else f'"{allowed[0]}"'
    cfg = config.load(write(tmp_path, GOOD.replace('cpus = "all"', f"cpus = {text}")))
    assert cfg.supervisor.cpus == tuple(range(allowed[0], allowed[-1] + 1))
    assert cfg.functions["hash"].workers == len(cfg.supervisor.cpus)


def test_cpus_takes_a_stride_as_taskset_does(tmp_path: Path) -> None:
    # `taskset -c 0-15:2` (every other core, one per physical core where hyperthreads pair
    # 0/1, 2/3 ...) was refused as neither a core nor a range.
    allowed = sorted(os.sched_getaffinity(0))
    text = f'"{allowed[0]}-{allowed[-1]}:2"'
    cfg = config.load(write(tmp_path, GOOD.replace('cpus = "all"', f"cpus = {text}")))
    assert cfg.supervisor.cpus == tuple(range(allowed[0], allowed[-1] + 1, 2))
    assert cfg.functions["hash"].workers == len(cfg.supervisor.cpus)


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("2-15", list(range(2, 16))),
        ("0-3,8-11", [0, 1, 2, 3, 8, 9, 10, 11]),
        ("5", [5]),
        (" 0 , 2-3 ", [0, 2, 3]),
        ("7-7", [7]),
        ("0-15:2", [0, 2, 4, 6, 8, 10, 12, 14]),
        ("1-7:3,12", [1, 4, 7, 12]),
        (" 0 - 9 : 4 ", [0, 4, 8]),
        ("2-3:8", [2]),  # as taskset: a stride past the range's end leaves its first core
    ],
)
def test_cpu_list_reads_taskset_syntax(text: str, cores: list[int]) -> None:
    assert cpu_list(text) == cores


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("15-2", 'range "15-2" runs backwards; write "2-15"'),
        ("", "('' is neither)"),
        # the value given too: "('' is neither)" alone did not say which comma was extra
        ("0,", "('' in '0,' is neither)"),
        ("0-3,,8", "('' in '0-3,,8' is neither)"),
        (" 0, x", "('x' in ' 0, x' is neither)"),
        ("0-3;8", "('0-3;8' is neither)"),
        ("a-b", "('a-b' is neither)"),
        ("-1", "('-1' is neither)"),
        ("1-2-3", "('1-2-3' is neither)"),
        ("٣", "('٣' is neither)"),  # a digit to str.isdigit, not to taskset
        ("0-8192", "core 8192 is past any machine's"),
        ("0-15:0", '"0-15:0" has stride 0; a stride is 1 or more, e.g. "0-15:2"'),
        ("3:2", '"3:2" has a stride but no range; write "3-LAST:2"'),
        ("0-15:", "('0-15:' is neither)"),
        ("0-15:2:2", "('0-15:2:2' is neither)"),
    ],
)
def test_cpu_list_refuses_what_taskset_would_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        cpu_list(text)


def test_overlapping_ranges_list_a_core_twice(tmp_path: Path) -> None:
    text = '[supervisor]\ncpus = "0-3,2-5"\n[functions.a]\ntarget = "x:y"\n'
    assert "supervisor.cpus: core 2 is listed twice; list each once" in error_of(tmp_path, text)


@pytest.mark.timeout(10)
def test_repeated_ranges_are_refused_at_once(tmp_path: Path) -> None:
    # Each range was spelled out, then every core counted against the whole list: eight
    # copies of "0-8191" took about a minute to read before it said so.
    cpus = ",".join(["0-8191"] * 8)
    text = f'[supervisor]\ncpus = "{cpus}"\n[functions.a]\ntarget = "x:y"\n'
    assert "supervisor.cpus: core 0 is listed twice; list each once" in error_of(tmp_path, text)


@pytest.mark.parametrize("grace", ["nan", "inf", "-1", "1e9"])
def test_graceful_timeout_must_be_a_real_bounded_number(tmp_path: Path, grace: str) -> None:
    text = f'[supervisor]\ngraceful_timeout = {grace}\n[functions.a]\ntarget = "x:y"\n'
    assert "supervisor.graceful_timeout" in error_of(tmp_path, text)


@pytest.mark.parametrize("boot", ["0", "nan", "-1", "1e9", '"60"', "true"])
def test_boot_timeout_must_be_a_positive_bounded_number(tmp_path: Path, boot: str) -> None:
    text = f'[supervisor]\nboot_timeout = {boot}\n[functions.a]\ntarget = "x:y"\n'
    assert "supervisor.boot_timeout: must be a number of seconds > 0" in error_of(tmp_path, text)


def test_ready_wait_is_10_s_unless_set(tmp_path: Path) -> None:
    # Operators and the docs count on 10 s; tests set less, to see it run out sooner.
    default = config.load(write(tmp_path, GOOD))
    assert default.supervisor.ready_wait == 10.0
    text = GOOD.replace("servers = []", "servers = []\nready_wait = 1.5")
    assert config.load(write(tmp_path, text)).supervisor.ready_wait == 1.5


@pytest.mark.parametrize("wait", ["0", "nan", "-1", "1e9", '"10"', "true"])
def test_ready_wait_must_be_a_positive_bounded_number(tmp_path: Path, wait: str) -> None:
    text = f'[supervisor]\nready_wait = {wait}\n[functions.a]\ntarget = "x:y"\n'
    assert "supervisor.ready_wait: must be a number of seconds > 0" in error_of(tmp_path, text)


@pytest.mark.parametrize(
    ("control", "said"),
    [
        ("/etc/hostname/ctl.sock", "/etc/hostname is not a directory; put the socket elsewhere"),
        ("/proc/ctl.sock", "/proc is a kernel filesystem, where no file can be made"),
        ("/etc/hostname/a/b/ctl.sock", "/etc/hostname is not a directory"),
        (
            "/tmp/" + "c" * 120 + ".sock",
            "is 130 bytes, longer than a Unix socket path may be (107)",
        ),
        ("127.0.0.1:47205", "'127.0.0.1:47205' is a TCP address; the control socket is a Unix"),
        ("{tmp}/gearman.sock", "is the job server's Unix socket in server.listen too"),
    ],
)
def test_a_control_socket_that_cannot_be_made_is_named_before_start(
    tmp_path: Path, control: str, said: str
) -> None:
    # Each failed at start as a bare OSError (exit 1, which systemd restarts), or (a TCP
    # address) became a relative path, or (the server's socket) stopped the server.
    text = (
        f'[server]\nlisten = ["127.0.0.1:47301", "unix:{tmp_path}/gearman.sock"]\n'
        f'[supervisor]\ncontrol = "{control.format(tmp=tmp_path)}"\n'
        '[functions.a]\ntarget = "workers.text:reverse"\n'
    )
    message = error_of(tmp_path, text)
    assert "supervisor.control: " in message and said in message, message


@pytest.mark.parametrize("key", ["server.listen", "supervisor.servers"])
def test_a_unix_socket_path_too_long_is_named_before_start(tmp_path: Path, key: str) -> None:
    # server.listen: the local server failed to bind at every start (exit 1, which systemd
    # restarts); supervisor.servers: the workers retried a connect that cannot work.
    table, name = key.split(".")
    path = "/tmp/" + "s" * 120 + ".sock"
    text = f'[{table}]\n{name} = ["127.0.0.1:47302", "unix:{path}"]\n'
    message = error_of(tmp_path, text + '[functions.a]\ntarget = "workers.text:reverse"\n')
    assert f"{key}: {path} is 130 bytes, longer than a Unix socket path may be" in message
    assert "choose a shorter path" in message, message


def test_a_core_listed_twice_is_refused(tmp_path: Path) -> None:
    # [0, 0, 1] was read as [0, 1] without a word: a typo for another core went unnoticed.
    text = '[supervisor]\ncpus = [0, 0, 1]\n[functions.a]\ntarget = "x:y"\n'
    assert "supervisor.cpus: core 0 is listed twice; list each once" in error_of(tmp_path, text)


def test_pool_sizes_are_bounded_by_count_and_memory(tmp_path: Path) -> None:
    huge = '[functions.a]\ntarget = "workers.text:reverse"\nworkers = 100000\n'
    assert "functions.a.workers: a would have 100000 workers (0..1024)" in error_of(tmp_path, huge)
    budget = (
        '[supervisor]\nmemory_budget_mb = 1000\n[functions.a]\ntarget = "workers.text:reverse"\n'
        "workers = 8\nmax_rss_mb = 200\n"
    )
    message = error_of(tmp_path, budget)
    assert "about 1600 MB" in message and "memory_budget_mb = 1000" in message
    fits = budget.replace("workers = 8", "workers = 5")
    assert config.load(write(tmp_path, fits)).supervisor.memory_budget_mb == 1000


@pytest.mark.parametrize(
    "pool",
    [
        '[functions.resize]\ntarget = "workers.text:reverse"\nworkers = 5000\n',
        '[functions.resize]\ncommand = ["php", "worker.php"]\nworkers = 5000\n',
    ],
)
def test_a_pool_over_1024_workers_is_refused_under_its_own_key(tmp_path: Path, pool: str) -> None:
    # It was refused under "functions", the one key of no use to the fix.
    text = '[server]\nlisten = ["127.0.0.1:47301"]\n' + pool
    message = error_of(tmp_path, text)
    assert message == (
        f"{tmp_path / 'farm.toml'}: functions.resize.workers: resize would have 5000 workers"
        " (0..1024); lower it to at most 1024"
    )


def test_auto_workers_past_1024_cores_is_refused_under_the_pools_key(tmp_path: Path) -> None:
    # No test host has 1025 cores: "auto" is handed that many as the supervisor's cpus.
    reader = PoolReader("farm.toml", tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"^farm.toml: functions\.big\.workers: big would have"
        r' 1025 workers \(0\.\.1024\); give a count instead of "auto"',
    ):
        reader.workers({"workers": "auto"}, "functions.big", 1025)
    assert reader.workers({"workers": "auto"}, "functions.big", 1024) == 1024


def test_capacity_rule_is_shared_with_scale() -> None:
    pools = config.load(None).functions
    assert config.capacity_problem(pools, {"reverse": 2}, 10_000) is None
    assert "would have 2000" in (config.capacity_problem(pools, {"reverse": 2000}, 10**9) or "")
    assert "memory_budget_mb = 300" in (config.capacity_problem(pools, {"reverse": 4}, 300) or "")


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
