"""farm.toml's [supervisor] keys and pool sizes: cpus (taskset's syntax), timeouts, the control
socket, worker counts and memory. Where pools register (reserved farm.* pools, [supervisor]
servers beside the local server): test_config_registration.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from farm import config
from farm.config import capacity
from farm.config.capacity import cpu_list
from farm.config.pooltables import PoolReader
from farm.errors import ConfigError
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


def test_a_scale_refusal_says_what_to_give_instead() -> None:
    # `farm scale reverse=-5` said "reverse would have -3 workers (0..1024)" and no more,
    # where the config's same refusal names the key to lower.
    pools = config.load(None).functions
    now = {"reverse": 2}
    assert capacity.scale_problem(pools, {"reverse": 3}, now, 10_000) is None
    count = capacity.scale_problem(pools, {"reverse": -3}, now, 10_000) or ""
    assert count == "reverse would have -3 workers (0..1024): give it 0 to 1024 (it has 2 now)"
    memory = capacity.scale_problem(pools, {"reverse": 40}, now, 300) or ""
    assert "memory_budget_mb = 300" in memory and memory.endswith(
        ": scale by less, or give the pools a lower max_rss_mb (farm reload) or the farm a"
        " larger memory_budget_mb (a restart)"
    ), memory
