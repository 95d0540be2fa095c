"""farm.toml validation: good files load, every mistake is one line naming file, key and fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from farm import config, discovery
from farm.config.capacity import cpu_list
from farm.config.pooltables import PoolReader
from farm.errors import ConfigError
from farm.paths import runtime_dir, state_dir
from tests.helpers import ROOT
from tests.helpers.servers import free_port
from tests.helpers.unprivileged import homeless, unprivileged

GOOD = """
[server]
listen = ["127.0.0.1:4999", "unix:run/gearman.sock"]
store = "none"
job_retries = 5

[supervisor]
control = "/tmp/farm-test/control.sock"
cpus = "all"
servers = []

[functions.rev]
target = "workers.hashing:compress"
workers = 2

[functions.hash]
target = "workers.hashing:pbkdf2"
workers = "auto"
timeout = 30
max_jobs = 100
max_rss_mb = 256
"""


def write(tmp_path: Path, text: str, name: str = "farm.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    return message


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
        ("0-3,,8", "('' is neither)"),
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
        ('cpus = "all"', "cpus = [999]", "supervisor.cpus", "core 999"),
        ('cpus = "all"', 'cpus = "some"', "supervisor.cpus", '"all", a list of core numbers'),
        ('cpus = "all"', 'cpus = "0-"', "supervisor.cpus", "taskset -c"),
        ('cpus = "all"', 'cpus = "1-0"', "supervisor.cpus", 'runs backwards; write "0-1"'),
        ('cpus = "all"', 'cpus = "0-1:0"', "supervisor.cpus", "stride 0; a stride is 1 or more"),
        ('cpus = "all"', 'cpus = "0-999"', "supervisor.cpus", "outside this process's CPU set"),
        ('cpus = "all"', 'cpus = "0-99999999"', "supervisor.cpus", "8192 at most"),
        ("servers = []", 'servers = ["nohost"]', "supervisor.servers", "HOST:PORT"),
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
            "function names use letters",
        ),
        ("workers = 2", 'workers = 2\nfunction = "rev\\n"', "functions.rev.function", "letters"),
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


def test_unimportable_target(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "workers.nope:compress"))
    assert "functions.rev.target" in message and "no module named 'workers.nope'" in message
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "workers.hashing:nope"))
    assert "defines no 'nope'" in message
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "workers.hashing"))
    assert 'must look like "module:function"' in message
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "nopkg.sub:f"))
    assert "cannot import 'nopkg.sub'" in message or "no module named" in message


def test_a_target_that_raises_on_import_is_left_to_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checking must not execute the module: a raising import is a boot failure, backed off.
    (tmp_path / "boom.py").write_text(
        "raise RuntimeError('broken at import')\nif True:\n    def job(j):\n        return b''\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "boom:job")))
    assert cfg.functions["rev"].target == "boom:job"
    # Nor its parent package's __init__ (find_spec imported it: one that slept held the
    # supervisor, one that raised was a config error, exit 2, and systemd gave up).
    pkg = tmp_path / "boompkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('no DB')\n")
    (pkg / "jobs.py").write_text("def job(j):\n    return b''\n")
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "boompkg.jobs:job")))
    assert cfg.functions["rev"].target == "boompkg.jobs:job"
    assert "boompkg" not in sys.modules
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "boompkg.jobs:nope"))
    assert "defines no 'nope'" in message  # still found, and read
    message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "boompkg.nojobs:job"))
    assert "no module named 'boompkg.nojobs'" in message
    # A package split over two sys.path entries (pkgutil.extend_path in its __init__).
    for half in ("one", "two"):
        (tmp_path / half / "splitpkg").mkdir(parents=True)
        (tmp_path / half / "splitpkg" / "__init__.py").write_text(
            "import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n"
        )
    (tmp_path / "two" / "splitpkg" / "jobs.py").write_text("def job(j):\n    return b''\n")
    # On the PYTHONPATH the workers get (the check searches theirs, not this process's).
    halves = [str(tmp_path / "one"), str(tmp_path / "two"), str(ROOT)]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(halves))
    split = GOOD.replace("workers.hashing:compress", "splitpkg.jobs:job")
    assert config.load(write(tmp_path, split)).functions["rev"].target == "splitpkg.jobs:job"


def test_bad_toml_and_missing_functions(tmp_path: Path) -> None:
    assert "not valid TOML" in error_of(tmp_path, "[server\nlisten = 1")
    assert "missing" in error_of(tmp_path, "[functions.a]\nworkers = 1\n")
    assert "function names" in error_of(tmp_path, '[functions."a b"]\ntarget = "x:y"\n')


def test_a_file_that_only_moves_the_farm_runs_the_built_in_pools(tmp_path: Path) -> None:
    # It was refused ("no functions"): moving farm off port 4730 meant copying every pool.
    listen = f'listen = ["127.0.0.1:47999", "unix:{tmp_path}/g.sock"]'
    moved = write(tmp_path, f"[server]\n{listen}\njob_retries = 1\n")
    cfg = config.load(moved)
    assert set(cfg.functions) == set(config.load(None).functions)
    assert "reverse" in cfg.functions and cfg.server.job_retries == 1
    named = write(tmp_path, '[functions.reverse]\ntarget = "workers.text:reverse"\n', "one.toml")
    assert set(config.load(named).functions) == {"reverse"}, "naming any pool names them all"


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FARM_CONFIG", raising=False)
    monkeypatch.setattr(discovery, "SYSTEM_CONFIG", tmp_path / "etc" / "farm.toml")
    assert config.find_config() is None  # built-in defaults
    (tmp_path / "etc").mkdir()
    system = write(tmp_path / "etc", GOOD)
    assert config.find_config() == system
    local = write(tmp_path, GOOD)
    assert config.find_config() == Path("farm.toml") and local.exists()
    env = write(tmp_path, GOOD, "env.toml")
    monkeypatch.setenv("FARM_CONFIG", str(env))
    assert config.find_config() == env
    explicit = write(tmp_path, GOOD, "explicit.toml")
    assert config.find_config(explicit) == explicit
    with pytest.raises(ConfigError, match="no such config file"):
        config.find_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"is a directory, not a config file \(--config\)"):
        config.find_config(tmp_path)
    monkeypatch.setenv("FARM_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"\$FARM_CONFIG"):
        config.find_config()


def test_a_config_this_user_may_not_reach_is_not_a_traceback(tmp_path: Path) -> None:
    # `sudo -u farm farm ps` run from root's home (/root, 0700): the look for ./farm.toml
    # raised PermissionError, and every command, farm.Client() too, ended in a traceback. So
    # did an /etc/farm closed to the caller. Neither can be this user's config: the search
    # goes on. A file named with --config that it may not reach is one line.
    cwd, etc = tmp_path / "home", tmp_path / "etc"
    for locked in (cwd, etc):
        locked.mkdir()
        write(locked, GOOD)
        locked.chmod(0o000)
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from farm import discovery
        from farm.errors import ConfigError
        discovery.SYSTEM_CONFIG = Path(sys.argv[1])
        print(discovery.find_config())
        try:
            discovery.find_config(sys.argv[1])
        except ConfigError as e:
            print(e)
    """)
    argv = unprivileged([sys.executable, "-c", code, str(etc / "farm.toml")])
    env = {k: v for k, v in os.environ.items() if k != "FARM_CONFIG"}
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "None",
        f"{etc}/farm.toml: this user may not reach it (permission denied) (--config); check"
        " the path",
    ]


def test_defaults_need_no_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cfg = config.load(None)
    assert cfg.source == config.DEFAULTS_SOURCE
    assert cfg.supervisor.control == f"{tmp_path}/farm/control.sock"
    assert cfg.server.store == f"{tmp_path}/state/farm/queue-4730.db"  # its own, by port
    assert set(cfg.functions) >= {"reverse", "resize", "thumbnail", "pbkdf2"}
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime_dir() == Path(f"/tmp/farm-{os.getuid()}")
    # Under systemd (RuntimeDirectory=farm): its directory, not the fallback in /tmp, which
    # PrivateTmp= makes the service's own. systemd makes it, for the unit's user, first.
    (tmp_path / "farm").mkdir(mode=0o700)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "farm"))
    assert runtime_dir() == tmp_path / "farm"
    assert config.load(None).supervisor.control == f"{tmp_path}/farm/control.sock"
    # Another unit's (a caller's own service): not where farm's sockets are.
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "myapp"))
    assert runtime_dir() == Path(f"/tmp/farm-{os.getuid()}")


def test_a_state_directory_this_user_may_not_reach_keeps_jobs_in_memory(tmp_path: Path) -> None:
    # `runuser -u nobody -- farm up` keeps nobody's HOME, /nonexistent, which on a host
    # where something made it is root's, mode 0700: the default store's look for the nearest
    # directory that exists raised PermissionError, and `farm up` ended in a traceback
    # rather than keep the jobs in memory with a warning, as the docs say.
    locked = tmp_path / "home"
    locked.mkdir(mode=0o000)
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
    env |= {"XDG_STATE_HOME": str(locked / ".local/state"), "XDG_RUNTIME_DIR": str(tmp_path)}
    code = "from farm import config; print(config.load(None).server.store)"
    argv = unprivileged([sys.executable, "-c", code])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "none\n"


def test_relative_xdg_directories_are_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The XDG spec: a relative path in these variables is invalid and is ignored. farm took
    # it relative to the working directory: `farm up` in one directory put its sockets and
    # store there, and `farm ps`, `farm stop` or the Executor from another (the same
    # variables exported) looked for them somewhere else.
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)  # of this user, closed to others: otherwise taken
    monkeypatch.setenv("XDG_RUNTIME_DIR", "run")
    monkeypatch.setenv("XDG_STATE_HOME", "state")
    assert runtime_dir() == Path(f"/tmp/farm-{os.getuid()}")
    assert state_dir() == Path(os.path.expanduser("~/.local/state/farm"))


def test_no_home_at_all_is_no_state_directory_not_a_relative_one(tmp_path: Path) -> None:
    # $HOME unset and a uid the user database does not know (a container's arbitrary user):
    # expanduser left "~/.local/state" as it was, and `farm up` kept its store and the
    # Executor's key in a directory named "~" under wherever it was started, where callers
    # started elsewhere did not look. Now the jobs stay in memory, with the reason said.
    code = textwrap.dedent(
        """
        from farm import config, paths
        print(config.load(None).server.store)
        try:
            print(paths.state_dir())
        except paths.NoStateDirectory as exc:
            print(exc)
        """
    )
    run = tmp_path / "cwd"
    run.mkdir(mode=0o777)
    run.chmod(0o777)  # writable by that uid, as a directory named "~" was made in it
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    argv = homeless([sys.executable, "-c", code])
    out = subprocess.run(argv, env=env, cwd=run, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    store, why = out.stdout.splitlines()
    assert store == "none"
    assert "no state directory" in why and "set $XDG_STATE_HOME" in why, why
    # `farm server` has no default store then: one line, as for a store it cannot open
    server = [sys.executable, "-m", "farm", "server", "-p", str(free_port())]
    out = subprocess.run(
        homeless(server), env=env, cwd=run, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("farm server: farm has no state directory: $HOME is not set")
    assert "or give --store PATH" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert list(run.iterdir()) == []


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


def test_server_tuning_keys_become_the_servers_flags(tmp_path: Path) -> None:
    tuned = GOOD.replace(
        "job_retries = 5",
        'job_retries = 5\nmax_queue = 100\nstore_sync = "full"\nexceptions = true\n'
        'wake_deadline = 2\nunix_mode = "600"\nmax_packet = 1048576\nkeepalive_idle = 30',
    )
    cfg = config.load(write(tmp_path, tuned))
    assert cfg.server.flags == (
        "--store-sync=full",
        "--max-queue=100",
        "--max-packet=1048576",
        "--wake-deadline=2.0",
        "--keepalive-idle=30",
        "--exceptions",
        "--unix-mode=600",
    )
    # Left out, no flag: the server keeps its own defaults.
    assert config.load(write(tmp_path, GOOD)).server.flags == ()
    assert config.load(write(tmp_path, GOOD.replace("job_retries = 5", "exceptions = false")))


@pytest.mark.parametrize(
    ("line", "key", "hint"),
    [
        ("max_queue = -1", "server.max_queue", "max_queue must be >= 0"),
        ("max_queued_bytes = -1", "server.max_queued_bytes", "max_queued_bytes must be >= 0"),
        ("max_queue = true", "server.max_queue", "must be a whole number, got True"),
        ("max_connections = 0", "server.max_connections", "at least 1"),
        ('store_sync = "always"', "server.store_sync", 'must be "normal" or "full"'),
        ("wake_deadline = 0", "server.wake_deadline", "between 0.01 and 60"),
        ("keepalive_idle = 0", "server.keepalive_idle", "from 1 to 32767"),
        ("keepalive_interval = 40000", "server.keepalive_interval", "from 1 to 32767"),
        ("keepalive_count = 128", "server.keepalive_count", "from 1 to 127"),
        ("wake_deadline = nan", "server.wake_deadline", "between 0.01 and 60"),
        ("wake_deadline = inf", "server.wake_deadline", "between 0.01 and 60"),
        ('wake_deadline = "1"', "server.wake_deadline", "a number of seconds"),
        ("exceptions = 1", "server.exceptions", "true or false"),
        ('unix_mode = "999"', "server.unix_mode", "not an octal mode"),
        ('unix_mode = "1777"', "server.unix_mode", "from 000 to 777"),
        ("unix_mode = 660", "server.unix_mode", 'in quotes, such as "660"'),
        ("max_packet = 100", "server.max_packet", "at least 1024"),
        ("max_packet = 1073741824", "server.max_packet", "at most 67108864"),
        (
            "max_packet = 1048576\nmax_partial_bytes = 4096",
            "server.max_partial_bytes",
            "max_partial_bytes must be at least max_packet",
        ),
        ("backlog = 0", "server.backlog", "at least 1"),
        # Each under its own key: the server's one check of both named the first of them.
        ("max_abilities = 0", "server.max_abilities", "max_abilities must be at least 1"),
        ("max_tcp_abilities = -1", "server.max_tcp_abilities", "max_tcp_abilities must be at"),
        # past a C int: the server's listen() failed in a traceback, under systemd for ever
        ("backlog = 99999999999", "server.backlog", "at most 2147483647"),
        ("max_queu = 3", "server.max_queu", "did you mean 'max_queue'"),
    ],
)
def test_a_tuning_key_the_server_would_refuse_is_one_line(
    tmp_path: Path, line: str, key: str, hint: str
) -> None:
    message = error_of(tmp_path, GOOD.replace("job_retries = 5", line, 1))
    assert f": {key}: " in message, message
    assert hint in message, message
    assert "--" not in message, message  # the config's words, not the server's flags


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[server]\nlisten = [3]", 'server.listen: must be a list of addresses like ["'),
        ('[server]\nlisten = ["h:0"]', "server.listen: server address 'h:0': port must be"),
        ("[supervisor]\nservers = [1]", "supervisor.servers: must be a list of addresses"),
        ('[supervisor]\nservers = "h:1"', "supervisor.servers: must be a list of addresses"),
    ],
)
def test_the_address_only_reading_names_the_key(tmp_path: Path, text: str, said: str) -> None:
    # What `farm status -c`, `farm submit -c` and farm.Client read: `listen = [3]` sent the
    # calls to "3:4730", and a bad address was refused without the key that held it.
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        discovery.client_servers(path)
    assert str(info.value).startswith(f"{path}: {said}"), info.value


def test_a_target_in_a_working_directory_others_may_write_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers import from the working directory only when others may not write to it
    # (tests/security/test_planted_module.py): the check finds what they will import.
    (tmp_path / "mine.py").write_text("def job(j):\n    return b''\n")
    monkeypatch.chdir(tmp_path)
    os.chmod(tmp_path, 0o755)
    cfg = config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job")))
    assert cfg.functions["rev"].target == "mine:job"
    os.chmod(tmp_path, 0o1777)  # as /tmp: another user may have left mine.py
    try:
        message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job"))
    finally:
        os.chmod(tmp_path, 0o755)
    assert (
        f"no module named 'mine'; check the spelling and PYTHONPATH (not {tmp_path}: it may"
        " be written by every user" in message
    ), message
    # The way to trust it anyway: an absolute PYTHONPATH entry is searched (a relative one
    # is dropped for the workers, as it names the working directory).
    assert f"PYTHONPATH={tmp_path} if you trust it)" in message, message


def test_a_farm_run_as_root_searches_no_working_directory_its_group_may_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A member of the directory's group who left mine.py there ran it as root.
    nogroup = 65534  # a group root is not in
    if os.geteuid() != 0:
        pytest.skip("the group's write counts for a farm run as root only")
    (tmp_path / "mine.py").write_text("def job(j):\n    return b''\n")
    monkeypatch.chdir(tmp_path)
    os.chmod(tmp_path, 0o775)
    os.chown(tmp_path, 0, nogroup)
    try:
        message = error_of(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job"))
        # root's own group (umask 002 makes root's directories 0775, root:root) is root's
        os.chown(tmp_path, 0, 0)
        config.load(write(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job")))
    finally:
        os.chmod(tmp_path, 0o755)
        os.chown(tmp_path, 0, 0)
    assert f"(not {tmp_path}: it may be written by its group (gid {nogroup})" in message, message


def test_a_runtime_dir_too_long_for_a_socket_is_passed_over(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_local_farm: Path
) -> None:
    # A $XDG_RUNTIME_DIR so long that farm/control.sock in it is longer than a socket path
    # may be: every default address was a config error naming the built-in defaults ("fix
    # it there"), and farm.Client(), farm status and farm up failed, the TCP fallback too.
    from farm.discovery import client_servers

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # no farm.toml found here
    deep = tmp_path / ("r" * (110 - len(str(tmp_path))))
    deep.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    from farm.paths import fallback_runtime_dir

    fallback = fallback_runtime_dir()  # /tmp/farm-$UID, or under $TMPDIR (no_local_farm's)
    assert runtime_dir() == fallback
    assert config.load(None).supervisor.control == f"{fallback}/control.sock"
    # No ConfigError: no farm answers at the fallback's socket (no_local_farm), so TCP.
    assert client_servers() == ["127.0.0.1:4730"]
    # one that fits is still the one used
    short = tmp_path / "run"
    short.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short))
    assert runtime_dir() == short / "farm"


@pytest.mark.parametrize(
    ("mode", "pythonpath", "beside"),
    [
        (0o755, "lib:{root}", "lib"),  # a relative entry: dropped for the workers
        (0o1777, "{root}", "."),  # python -c (or -m) put this directory first: not theirs
    ],
)
def test_the_target_check_searches_what_the_workers_will(
    tmp_path: Path, mode: int, pythonpath: str, beside: str
) -> None:
    # The check searched the supervisor's own sys.path, which still holds what the workers
    # (python -P, trusted_pythonpath) do not get: farm up passed it, and then every worker
    # failed to boot, retried with backoff, where one config line could have said it.
    run = tmp_path / "run"
    (run / "lib").mkdir(parents=True)
    (run / beside / "mine.py").write_text("def job(j):\n    return b''\n")
    path = write(tmp_path, GOOD.replace("workers.hashing:compress", "mine:job"))
    run.chmod(mode)
    code = f"from farm import config\ntry:\n    config.load({str(path)!r})\n"
    code += "except Exception as e:\n    print(e)\nelse:\n    print('loaded')\n"
    env = dict(os.environ, PYTHONPATH=pythonpath.format(root=ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=run, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "functions.rev.target" in out.stdout, out.stdout
    assert "no module named 'mine'" in out.stdout, out.stdout
    if beside == "lib":  # the supervisor's warning of the entry comes after this check
        assert "the workers do not search its relative entries ['lib']" in out.stdout


def test_the_defaults_load_where_the_working_directory_was_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A farm run on the built-in defaults reloads them: their base was the working
    # directory, so where `farm up` had been started in one removed since, every reload
    # failed with "cd to an existing one". They hold no relative path to read against it.
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert "reverse" in config.load(None).functions
