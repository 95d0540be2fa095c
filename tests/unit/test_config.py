"""farm.toml validation: good files load, every mistake is one line naming file, key and fix.

The table of mistakes and the file as a whole (TOML, encoding, [functions]) are here; the
supervisor's keys are in test_config_supervisor.py, where pools register in
test_config_registration.py, the server's in test_config_server.py, function targets in
test_config_targets.py, where farm looks for files in test_config_paths.py.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from farm import config, discovery
from farm.errors import ConfigError
from farm.protocol import DEFAULT_MAX_PACKET
from tests.helpers.configs import GOOD, error_of, write


def test_good_config_loads_into_frozen_dataclasses(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.server.listen == ("127.0.0.1:4999", f"unix:{tmp_path}/run/gearman.sock")
    assert cfg.server.tcp == ("127.0.0.1", 4999)
    assert cfg.server.unix == f"{tmp_path}/run/gearman.sock"  # relative to the file
    assert cfg.server.store == "none" and cfg.server.job_retries == 5
    assert cfg.local_server and cfg.worker_servers == (f"unix:{tmp_path}/run/gearman.sock",)
    assert list(cfg.functions) == ["rev", "hash"]
    rev, hsh = cfg.functions["rev"], cfg.functions["hash"]
    assert (rev.workers, rev.timeout, rev.max_jobs) == (2, None, None)
    assert hsh.workers == len(os.sched_getaffinity(0))
    assert (hsh.timeout, hsh.max_jobs, hsh.max_rss_mb) == (30, 100, 256)
    with pytest.raises(AttributeError):
        rev.workers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.functions["x"] = rev  # type: ignore[index]


def test_remote_servers_replace_the_local_one(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD.replace("servers = []", 'servers = ["10.0.0.5:4730"]')))
    assert not cfg.local_server and cfg.worker_servers == ("10.0.0.5:4730",)


@pytest.mark.timeout(20)
def test_a_fifo_at_the_store_path_is_a_config_error_not_a_wait(tmp_path: Path) -> None:
    # Reading its first bytes waited for a writer: `farm up` hung before it said anything
    # (another user may make one at a store path in /tmp).
    os.mkfifo(tmp_path / "q.db")
    text = GOOD.replace('store = "none"', f'store = "{tmp_path / "q.db"}"')
    assert "server.store" in error_of(tmp_path, text)
    assert "q.db is not a regular file" in error_of(tmp_path, text)


def test_missing_sections_take_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, '[functions.z]\ntarget = "workers.hashing:compress"\n'))
    assert cfg.server.tcp == ("127.0.0.1", 4730)
    assert cfg.supervisor.cpus == tuple(sorted(os.sched_getaffinity(0)))
    assert cfg.functions["z"].workers == len(cfg.supervisor.cpus)  # workers defaults to auto


@pytest.mark.parametrize(
    ("old", "new", "key", "hint"),
    [
        ("job_retries = 5", "job_retrys = 5", "server.job_retrys", "did you mean 'job_retries'"),
        ("workers = 2", "workers = -1", "functions.rev.workers", 'whole number >= 0 or "auto"'),
        ("workers = 2", 'workers = "two"', "functions.rev.workers", "got 'two'"),
        ("workers = 2", "workers = 2.5", "functions.rev.workers", "whole number"),
        ("timeout = 30", "timeout = 0", "functions.hash.timeout", "> 0"),
        # past CAN_DO_TIMEOUT's limit the server refuses the worker, which would reconnect
        ("timeout = 30", "timeout = 31622401", "functions.hash.timeout", "at most 31622400"),
        ("max_jobs = 100", "max_jobs = true", "functions.hash.max_jobs", "whole number"),
        (
            "max_rss_mb = 256",
            "max_rss_mb = 256\nkill_rss_mb = 200",
            "functions.hash.kill_rss_mb",
            "must be >= max_rss_mb (256), got 200",
        ),
        ("max_rss_mb = 256", "kill_rss_mb = 0", "functions.hash.kill_rss_mb", "> 0"),
        # kill_rss_mb's 1.5 x max_rss_mb, in floats: OverflowError, a traceback past 1e308
        ("max_rss_mb = 256", "max_rss_mb = 1" + "0" * 400, "functions", "memory_budget_mb"),
        ("job_retries = 5", 'job_retries = "5"', "server.job_retries", "whole number"),
        ('store = "none"', "store = 3", "server.store", '"none"'),
        # a NUL in a path: open() raised ValueError, a traceback (the store), or bind did at
        # start (the control socket, the Unix listener)
        ('store = "none"', 'store = "q\\u0000.db"', "server.store", "NUL"),
        ('control = "/tmp/', 'control = "/tmp/\\u0000', "supervisor.control", "NUL"),
        ('"unix:run/', '"unix:run/\\u0000', "server.listen", "NUL"),
        # a file named None beside the config: the memory-only store was meant
        ('store = "none"', 'store = "None"', "server.store", 'write "none"'),
        ('store = "none"', 'store = "/tmp"', "server.store", "is a directory: name a file in it"),
        ('store = "none"', 'store = "/etc/passwd"', "server.store", "not a SQLite database"),
        ('store = "none"', 'store = "/proc/q.db"', "server.store", "/proc is a kernel filesystem"),
        # farm check said ok, and farm up's server could not open it, exit 1
        ('store = "none"', f'store = "/tmp/{"q" * 300}"', "server.store", "a name over 255 bytes"),
        # as the control socket: the server's bind failed at start, exit 1, in lines naming
        # no file (which systemd restarts)
        ('"unix:run/', '"unix:/proc/', "server.listen", "/proc is a kernel filesystem"),
        # a NUL in a host: the server's exec failed ("embedded null byte"), exit 1
        ('"127.0.0.1:', '"127.0.0.1\\u0000:', "server.listen", "is not a host name or address"),
        ("servers = []", 'servers = ["h\\u0000:1"]', "supervisor.servers", "not a host name"),
        # a host no resolver is asked for: the config read, and the workers' connects failed
        # for ever with IDNA's "label empty or too long" (listen: farm up's later check)
        ('"127.0.0.1:', '"a..b:', "server.listen", "'a..b' is not a host name or address"),
        ("servers = []", f'servers = ["{"a" * 64}.x:1"]', "supervisor.servers", "over DNS's 63"),
        ('store = "none"', 'store = "/etc/hostname/q.db"', "server.store", "is not a directory;"),
        (
            "[supervisor]",
            '[executor]\nspill_dir = "/tmp"\n[supervisor]',
            "executor.spill_dir",
            "every user",
        ),
        (
            "[supervisor]",
            '[executor]\nspill_dir = "/etc/passwd"\n[supervisor]',
            "executor.spill_dir",
            "not a directory",
        ),
        # the farm started without a word, and the first large call failed
        *(
            ("[supervisor]", f'[executor]\nspill_dir = "{path}"\n[supervisor]', key, said)
            for path, key, said in (
                ("/etc/hostname/spill", "executor.spill_dir", "/etc/hostname is not a directory;"),
                ("/proc/spill", "executor.spill_dir", "/proc is a kernel filesystem"),
                (f"/tmp/{'s' * 256}", "executor.spill_dir", "a name over 255 bytes"),
            )
        ),
        ('cpus = "all"', "cpus = [999]", "supervisor.cpus", "core 999"),
        ('cpus = "all"', 'cpus = "some"', "supervisor.cpus", '"all", a list of core numbers'),
        ('cpus = "all"', 'cpus = "0-"', "supervisor.cpus", "taskset -c"),
        ('cpus = "all"', 'cpus = "1-0"', "supervisor.cpus", 'runs backwards; write "0-1"'),
        ('cpus = "all"', 'cpus = "0-1:0"', "supervisor.cpus", "stride 0; a stride is 1 or more"),
        ('cpus = "all"', 'cpus = "0-999"', "supervisor.cpus", "outside this process's CPU set"),
        ('cpus = "all"', 'cpus = "0-99999999"', "supervisor.cpus", "8192 at most"),
        (
            'cpus = "all"',
            'cpus = "all"\nmemory_budget_mb = 0',
            "supervisor.memory_budget_mb",
            "> 0",
        ),
        (
            "[supervisor]",
            "[executor]\nmax_spill_mb = 0\n[supervisor]",
            "executor.max_spill_mb",
            "must be a whole number > 0, got 0",
        ),
        (
            "job_retries = 5",
            f"job_retries = 5\nmax_packet = {DEFAULT_MAX_PACKET + 1}",
            "server.max_packet",
            f"must be at most {DEFAULT_MAX_PACKET}",
        ),
        (
            "[functions.rev]",
            f"[functions.{'r' * 65}]",
            f'functions."{"r" * 65}"',
            "longer than 64 bytes",
        ),
        ("servers = []", 'servers = ["nohost"]', "supervisor.servers", "HOST:PORT"),
        # every interface to a listener, no server to a worker: its connects failed for ever
        ("servers = []", 'servers = [":4999"]', "supervisor.servers", "127.0.0.1:4999"),
        (
            '"127.0.0.1:4999", ',
            '"127.0.0.1:4999", "127.0.0.1:5000", ',
            "server.listen",
            "at most one TCP",
        ),
        ("[functions.rev]", "[functions.rev]\nzzz = 1", "functions.rev.zzz", "allowed:"),
        ("[functions.rev]", "[functions.rev]\nuser = 1", "functions.rev.user", "command pools"),
        ("[supervisor]", "[supervisor]\ncontrl = 'x'", "supervisor.contrl", "did you mean"),
        # a key of another table is sent there: "timeout" in [supervisor] was taken for a
        # typo of boot_timeout, and [server]'s max_queue in a pool listed the pool's keys
        ("[supervisor]", "[supervisor]\ntimeout = 3", "supervisor.timeout", "[functions.NAME]"),
        ("workers = 2", "workers = 2\nmax_queue = 5", "functions.rev.max_queue", "in [server]"),
        ("[server]", 'listen = ["127.0.0.1:4998"]\n[server]', "listen", "in [server]"),
        ("[supervisor]", '[supervisor]\nlisten = ["h:1"]', "supervisor.listen", "in [server]"),
        # a pool's keys right under [functions]: "must be a table ([functions.target])"
        (
            "[functions.rev]",
            '[functions]\ntarget = "workers.text:upper"\n[functions.rev]',
            "functions.target",
            "a pool's key; put it in a [functions.NAME] table",
        ),
        # case and dashes: "WORKERS" listed every key, as if no key were near
        ("workers = 2", "WORKERS = 2", "functions.rev.WORKERS", "did you mean 'workers'"),
        ('cpus = "all"', 'CPUs = "all"', "supervisor.CPUs", "did you mean 'cpus'"),
        (
            "[supervisor]",
            '[supervisor]\nmetrics = "0.0.0.0:4999"',
            "supervisor.metrics",
            "is the job server's listen address 127.0.0.1:4999 too; give the metrics another",
        ),
        (
            "[supervisor]",
            '[supervisor]\nmetrics = "localhost:4999"',
            "supervisor.metrics",
            "is the job server's listen address 127.0.0.1:4999 too",
        ),
        # the metrics' own forms, not the job server's (which offered unix: and port 4730)
        ("[supervisor]", '[supervisor]\nmetrics = "on"', "supervisor.metrics", 'or "off"'),
        ("[supervisor]", '[supervisor]\nmetrics = "h:70000"', "supervisor.metrics", "9730"),
        # port 0 is checked as 1: the line quoted "h/x:1", which the file does not say
        ("[supervisor]", '[supervisor]\nmetrics = "h/x:0"', "supervisor.metrics", "'h/x:0'"),
        ("[functions.rev]", "[bogus]\n[functions.rev]", "bogus", "unknown key"),
        # `$` let a name end in a newline: a function the admin protocol's lines cannot hold
        (
            "[functions.rev]",
            '[functions."up\\n"]\ntarget = "workers.text:upper"\n[functions.rev]',
            'functions."up\\n"',
            "a pool's name holds a control character",
        ),
        (
            "workers = 2",
            'workers = 2\nfunction = "rev\\n"',
            "functions.rev.function",
            'function name "rev\\n" holds a control character',
        ),
        (  # the Executor's calls are code to run: only under names other users cannot serve
            "[functions.rev]",
            '[functions.py]\ntarget = "farm.executor.call:run_call"\n[functions.rev]',
            "functions.py",
            'serves only reserved farm.* functions; name the pool "farm.py"',
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_key_and_the_fix(
    tmp_path: Path, old: str, new: str, key: str, hint: str
) -> None:
    assert old in GOOD
    message = error_of(tmp_path, GOOD.replace(old, new, 1))
    assert f": {key}:" in message, message
    assert hint in message, message
    if key == "supervisor.metrics":
        assert "unix:" not in message and "4730" not in message, message


@pytest.mark.parametrize(
    ("listen", "metrics"),
    [
        # a listener on 127.0.0.1 holds its port on [::1] too (farm.loopback): the server's
        # [::1] twin, or the metrics', found the other's socket there; farm check said ok,
        # and farm up exited 1 at every start
        ("127.0.0.1:4999", "[::1]:4999"),
        ("[::1]:4999", "127.0.0.1:4999"),
    ],
)
def test_the_metrics_port_is_refused_where_a_twin_on_ipv6_localhost_takes_it(
    tmp_path: Path, listen: str, metrics: str
) -> None:
    text = GOOD.replace('"127.0.0.1:4999"', f'"{listen}"').replace(
        "[supervisor]", f'[supervisor]\nmetrics = "{metrics}"'
    )
    message = error_of(tmp_path, text)
    assert ": supervisor.metrics:" in message, message
    assert f"{metrics} is the job server's listen address {listen} too" in message, message
    # another port on [::1], or another 127.x address, takes no twin: still a good config
    for apart in ("[::1]:4998", "127.0.0.2:4999"):
        config.load(write(tmp_path, text.replace(metrics, apart)))


def test_the_control_socket_is_refused_where_a_link_makes_it_the_servers_socket(
    tmp_path: Path,
) -> None:
    # Compared as written (normpath), link/s.sock and real/s.sock were two sockets; the
    # server's bind then found the control socket there, exit 1 at every start (on many
    # hosts /var/run is a link to /run).
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    text = GOOD.replace('"unix:run/gearman.sock"', '"unix:real/s.sock"').replace(
        'control = "/tmp/farm-test/control.sock"', 'control = "link/s.sock"'
    )
    message = error_of(tmp_path, text)
    assert ": supervisor.control:" in message, message
    assert "is the job server's Unix socket in server.listen too" in message, message
    config.load(write(tmp_path, text.replace("link/s.sock", "link/c.sock")))


def test_kill_rss_mb_defaults_to_one_and_a_half_max_rss_mb(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.functions["hash"].kill_rss_mb == 384  # 1.5 x 256
    assert cfg.functions["rev"].kill_rss_mb is None  # no max_rss_mb: no ceiling
    odd = config.load(write(tmp_path, GOOD.replace("max_rss_mb = 256", "max_rss_mb = 101")))
    assert odd.functions["hash"].kill_rss_mb == 152  # rounded up from 151.5
    both = GOOD.replace("max_rss_mb = 256", "max_rss_mb = 256\nkill_rss_mb = 256")
    assert config.load(write(tmp_path, both)).functions["hash"].kill_rss_mb == 256
    alone = GOOD.replace("max_rss_mb = 256", "kill_rss_mb = 500")
    hsh = config.load(write(tmp_path, alone)).functions["hash"]
    assert (hsh.max_rss_mb, hsh.kill_rss_mb) == (None, 500)
    # a changed ceiling restarts the pool on reload, as the other worker options do
    assert hsh.options() != cfg.functions["hash"].options()
    raised = GOOD.replace("max_rss_mb = 256", "max_rss_mb = 256\nkill_rss_mb = 1000")
    assert (
        config.load(write(tmp_path, raised)).functions["hash"].options()
        != cfg.functions["hash"].options()
    )


def test_bad_toml_and_missing_functions(tmp_path: Path) -> None:
    assert "not valid TOML" in error_of(tmp_path, "[server\nlisten = 1")
    assert "missing" in error_of(tmp_path, "[functions.a]\nworkers = 1\n")
    assert "a pool's name holds ' '" in error_of(tmp_path, '[functions."a b"]\ntarget = "x:y"\n')


def test_a_file_that_only_moves_the_farm_runs_the_built_in_pools(tmp_path: Path) -> None:
    # It was refused ("no functions"): moving farm off port 4730 meant copying every pool.
    listen = f'listen = ["127.0.0.1:47999", "unix:{tmp_path}/g.sock"]'
    moved = write(tmp_path, f"[server]\n{listen}\njob_retries = 1\n")
    cfg = config.load(moved)
    assert set(cfg.functions) == set(config.load(None).functions)
    assert "reverse" in cfg.functions and cfg.server.job_retries == 1
    named = write(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\n', "one.toml")
    assert set(config.load(named).functions) == {"reverse"}, "naming any pool names them all"


def test_a_number_past_pythons_digits_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # tomllib raised a bare ValueError (int's 4300 digits), which no reader caught: farm
    # check and farm up, and every client reading the file (discovery), ended in a traceback
    # that told the user to call sys.set_int_max_str_digits().
    path = tmp_path / "farm.toml"
    path.write_text("[server]\njob_retries = 1" + "0" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    said = str(info.value)
    assert said.startswith(f"{path}: not valid TOML: ") and "4300 digits" in said, said
    assert "set_int_max_str_digits" not in said, said


def test_binary_garbage_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    path.write_bytes(b"\xff\xfe\x00\x80 not text at all")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: not UTF-8 text; is it the right file?"


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # Notepad's UTF-8 writes one, unseen: "not valid TOML: Invalid statement (at line 1,
    # column 1)" pointed at a first line that looks right.
    path = tmp_path / "farm.toml"
    path.write_bytes(b"\xef\xbb\xbf" + textwrap.dedent(GOOD).encode())
    assert config.load(path).server.job_retries == 5
    assert discovery.local_farm(path).tcp == "127.0.0.1:4999"


@pytest.mark.parametrize("value", ["3", "true", '"reverse"', "[1, 2]"])
def test_functions_that_is_not_a_table_is_one_line(tmp_path: Path, value: str) -> None:
    # once a TypeError: the supervisor died of it on reload
    assert "functions: must be a table" in error_of(tmp_path, f"functions = {value}\n")
