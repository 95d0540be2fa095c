"""Command pools in farm.toml, `function`/`functions`, and how pools are named at runtime."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm import config
from farm.commandspec import CommandSpec, RunAs, base_environ
from farm.config.rules import on_running_farm
from farm.errors import ConfigError
from farm.pools.control import restart_picks
from farm.pools.slots import Slot
from farm.pools.steering import Steering
from farm.pools.workerargs import command_env

HEAD = """
[server]
listen = ["127.0.0.1:4999", "unix:run/gearman.sock"]
store = "none"

[supervisor]
control = "/tmp/farm-test/control.sock"
"""


def load(tmp_path: Path, functions: str) -> config.Config:
    path = tmp_path / "farm.toml"
    path.write_text(HEAD + textwrap.dedent(functions))
    return config.load(path)


def error_of(tmp_path: Path, functions: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, functions)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "farm.toml")), message
    return message


def test_a_command_pool_loads_with_its_keys(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    cfg = load(
        tmp_path,
        """
        [functions.php]
        command = "sh -c 'echo hi'"
        functions = ["reverse", "upper"]
        workers = 3
        cwd = "w"
        env = { APP_ENV = "prod", log-level = "debug" }
        stop_signal = "INT"
        graceful_timeout = 2.5
        """,
    )
    pool = cfg.functions["php"]
    assert pool.command is not None
    assert pool.command.argv[0].endswith("/sh") and pool.command.argv[1:] == ("-c", "echo hi")
    assert pool.command.cwd == str(tmp_path / "w")
    # A name no shell could export is one a program may still read: env has taken them.
    assert pool.command.env == (("APP_ENV", "prod"), ("log-level", "debug"))
    assert pool.functions == ("reverse", "upper") and pool.workers == 3
    assert pool.stop_signal == signal.SIGINT and pool.graceful_timeout == 2.5
    assert cfg.command_servers == ("127.0.0.1:4999",)


def test_a_command_pools_timeout_needs_the_local_servers_unix_socket(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[functions.p]\ncommand = "sh"\ntimeout = 5\n')
    assert cfg.functions["p"].timeout == 5
    path = tmp_path / "farm.toml"
    path.write_text(
        HEAD.replace(', "unix:run/gearman.sock"', "")
        + '[functions.p]\ncommand = "sh"\ntimeout = 5\n'
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert ": functions.p.timeout: " in message and "Unix" in message, message
    assert "\n" not in message


def test_function_renames_what_a_python_pool_serves(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[functions.a]\ntarget = "workers.text:reverse"\nfunction = "reverse"\n')
    assert cfg.functions["a"].functions == ("reverse",)
    plain = load(tmp_path, '[functions.a]\ntarget = "workers.text:reverse"\n')
    assert plain.functions["a"].functions == ("a",)


@pytest.mark.parametrize(
    ("functions", "key", "hint"),
    [
        ('command = ["no-such-program-x"]', "functions.p.command", "not on PATH"),
        ("command = []", "functions.p.command", "is empty"),
        ("command = 3", "functions.p.command", "must be a list"),
        ('command = "sh -c \'x"', "functions.p.command", "as a shell would"),
        ('command = "sh"\ntarget = "workers.text:reverse"', "functions.p.target", "either"),
        ('command = "sh"\nmax_jobs = 3', "functions.p.max_jobs", "Python workers only"),
        # A leaking PHP worker's operator was told to remove it, and nothing of what to do
        # instead: the worker's own exit 0 between jobs, which the supervisor recycles.
        ('command = "sh"\nmax_jobs = 3', "functions.p.max_jobs", "exit(0)"),
        ('command = "sh"\nmax_rss_mb = 300', "functions.p.max_rss_mb", "is recycled"),
        ('command = "sh"\nkill_rss_mb = 900', "functions.p.kill_rss_mb", "is recycled"),
        ('command = "sh"\ntimeout = 0', "functions.p.timeout", "whole number > 0"),
        ('command = "sh"\ncwd = "nowhere"', "functions.p.cwd", "not a directory"),
        ('command = "sh"\nenv = { A = 1 }', "functions.p.env", "table of strings"),
        ('command = "sh"\nstop_signal = "SIGNOPE"', "functions.p.stop_signal", "signal name"),
        ('command = "sh"\nstop_signal = "KILL"', "functions.p.stop_signal", "cannot be caught"),
        # true and 15.0 were signals 1 (SIGHUP) and 15, as Python's int of them
        ('command = "sh"\nstop_signal = true', "functions.p.stop_signal", "signal name"),
        ('command = "sh"\nstop_signal = 15.0', "functions.p.stop_signal", "signal name"),
        # a NUL cannot reach exec: every start of the pool failed (exit 127)
        ('command = ["sh", "a\\u0000b"]', "functions.p.command", "NUL"),
        ('command = "sh"\nenv = { A = "a\\u0000b" }', "functions.p.env", "NUL"),
        ('command = "sh"\ngraceful_timeout = -1', "functions.p.graceful_timeout", "0 to"),
        ('command = "sh"\nuser = "no-such-user-x"', "functions.p.user", "no user"),
        ('command = "sh"\npass_env = "DB_URL"', "functions.p.pass_env", "a list of"),
        ('command = "sh"\npass_env = ["DB-URL"]', "functions.p.pass_env", "'DB-URL' is not"),
        ('command = "sh"\npass_env = ["A=b"]', "functions.p.pass_env", "'A=b' is not"),
        ('command = "sh"\npass_env = [""]', "functions.p.pass_env", "'' is not"),
        # env's bad names said "must be a table of strings" of one; DB-URL is a name it takes
        ('command = "sh"\nenv = { "A=B" = "x" }', "functions.p.env", "'A=B' is not an environ"),
        ('command = "sh"\nenv = { "" = "x" }', "functions.p.env", "'' is not an environment"),
        ('target = "workers.text:reverse"\npass_env = ["A"]', "functions.p.pass_env", "command"),
        ('target = "workers.text:reverse"\ncwd = "."', "functions.p.cwd", "command pools"),
        ('command = "sh"\nfunction = "a"\nfunctions = ["b"]', "functions.p.functions", "not both"),
        ('command = "sh"\nfunctions = []', "functions.p.functions", "at least one"),
        ('command = "sh"\nfunction = "a b"', "functions.p.function", "holds ' '"),
        ("workers = 1", "functions.p.target", "command = "),
        # a target not a string was a TypeError traceback (normalize() argument 2), exit 1
        ("target = 1", "functions.p.target", 'must be a string like "module:function"'),
        ("target = true", "functions.p.target", 'must be a string like "module:function"'),
        ("target = [1]", "functions.p.target", 'must be a string like "module:function"'),
        ("target = { a = 1 }", "functions.p.target", 'must be a string like "module:function"'),
        ("target = 1.5", "functions.p.target", 'must be a string like "module:function"'),
    ],
)
def test_each_command_pool_mistake_is_one_line(
    tmp_path: Path, functions: str, key: str, hint: str
) -> None:
    message = error_of(tmp_path, "[functions.p]\n" + functions + "\n")
    assert f": {key}:" in message and hint in message, message


def test_a_command_without_its_x_bit_is_told_to_chmod(tmp_path: Path) -> None:
    # It said "is not an executable file; fix the path" of a file that is there.
    script = tmp_path / "worker.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    message = error_of(tmp_path, f'[functions.p]\ncommand = "{script}"\n')
    assert message.endswith(f": functions.p.command: {script} is not executable; chmod +x it")


def test_user_needs_a_root_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    message = error_of(tmp_path, '[functions.p]\ncommand = "sh"\nuser = "root"\n')
    assert ": functions.p.user: only a supervisor running as root" in message


def test_a_user_name_holding_a_nul_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root, getpwnam() raised ValueError (embedded null byte): `farm check` and `farm up`
    # ended in a traceback, exit 1, not the config's one line and exit 2.
    monkeypatch.setattr("os.geteuid", lambda: 0)
    message = error_of(tmp_path, '[functions.p]\ncommand = "sh"\nuser = "a\\u0000b"\n')
    assert ": functions.p.user: 'a\\x00b' holds a NUL character" in message, message


def test_a_command_pool_needs_a_tcp_address(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    path.write_text(HEAD.replace('"127.0.0.1:4999", ', "") + '[functions.p]\ncommand = "sh"\n')
    with pytest.raises(ConfigError, match=r"functions\.p\.command: command workers connect"):
        config.load(path)


def test_a_reload_adding_a_command_pool_needs_the_running_servers_tcp_address(
    tmp_path: Path,
) -> None:
    # The file that adds the pool adds the TCP address too; that waits for a restart, and
    # the command workers had no $FARM_SERVERS to connect to.
    path = tmp_path / "farm.toml"
    path.write_text(
        HEAD.replace('"127.0.0.1:4999", ', "") + '[functions.a]\ntarget = "workers.text:upper"\n'
    )
    running = config.load(path)
    new = load(tmp_path, '[functions.p]\ncommand = "sh"\n')
    with pytest.raises(ConfigError, match=r"functions\.p\.command: command workers connect"):
        on_running_farm(new, running)
    assert on_running_farm(new, new).functions["p"].command is not None


def test_pools_are_named_by_table_or_by_a_function_only_one_serves(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
        [functions.a]
        target = "workers.text:reverse"
        function = "reverse"
        [functions.b]
        target = "workers.text:reverse"
        function = "reverse"
        [functions.c]
        target = "workers.text:upper"
        functions = ["upper", "shout"]
        """,
    )
    sup = SimpleNamespace(config=cfg, targets={"a": 2, "b": 1, "c": 1}, config_path="/f.toml")
    assert Steering.pool_named(sup, "a") == "a"  # type: ignore[arg-type]  # a stand-in
    assert Steering.pool_named(sup, "shout") == "c"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="served by pools a, b; name one of them"):
        Steering.pool_named(sup, "reverse")  # type: ignore[arg-type]
    # the farm's own file: `farm scale -c other.toml` may reach a farm started from another
    with pytest.raises(ValueError, match="no pool or function 'x' in this farm's /f.toml"):
        Steering.pool_named(sup, "x")  # type: ignore[arg-type]
    sup.pool_named = lambda name: Steering.pool_named(sup, name)  # type: ignore[arg-type]
    # One pool by its table's name and by a function it serves: the last change was taken,
    # and `farm scale c=1 shout=2` said c=2 with exit 0.
    reply = Steering.scale(sup, ["c=1", "shout=2"])  # type: ignore[arg-type]
    assert reply == {
        "ok": False,
        "usage": True,
        "error": "shout=2: pool c is named twice (c, shout); give one change per pool",
    }

    def picks(names: object) -> dict[str, list[int] | None]:
        return restart_picks(names, cfg.functions, sup.targets, sup.pool_named)

    assert picks(["a#1", "a#0", "shout"]) == {"a": [1, 0], "c": None}
    assert picks([]) == {"a": None, "b": None, "c": None}
    with pytest.raises(ValueError, match="a has slots 0 to 1"):
        picks(["a#2"])
    sup.targets["b"] = 0  # scaled to 0: it said "b has slots 0 to -1"
    with pytest.raises(ValueError, match=re.escape("'b#0': b has no slots (scaled to 0)")):
        picks(["b#0"])
    sup.targets["b"] = 1
    # Not a number: every control client was answered "a has slots 0 to 1", as if the slot
    # were out of range, and "a#\u00b2" (isdigit, but not int's) "invalid literal for int()".
    for bad in ("a#x", "a#", "a#-1", "a#\u00b2", "#0"):
        said = f"{bad!r}: not POOL or POOL#SLOT (a slot is a number, e.g. reverse#0)"
        with pytest.raises(ValueError, match=re.escape(said)):
            picks([bad])


def test_a_command_of_another_user_starts_from_little_of_the_supervisors_environment() -> None:
    """Under another user, only PATH, the locale, the time zone and GEARMAN_SERVERS pass
    (tests/security/test_command_user_env.py runs one as nobody); under the supervisor's
    own user or none, all of it does, as before."""
    inherited = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "GEARMAN_SERVERS": "127.0.0.1:4730",
        "DATABASE_PASSWORD": "s3cret",
        "FARM_KEY_FILE": "/var/lib/farm/executor.key",
        "HOME": "/root",
    }

    def spec(uid: int | None) -> CommandSpec:
        user = None if uid is None else RunAs(name="www", uid=uid, gid=uid, groups=(), home="/w")
        return CommandSpec(argv=("/bin/sh",), user=user)

    as_user = {"HOME": "/w", "USER": "www", "LOGNAME": "www"}
    assert base_environ(spec(os.geteuid() + 1), inherited) == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "GEARMAN_SERVERS": "127.0.0.1:4730",
        **as_user,
    }
    assert base_environ(spec(None), inherited) == inherited
    # A user of the supervisor's own uid crosses no boundary: everything, as before.
    assert base_environ(spec(os.geteuid()), inherited) == {**inherited, **as_user}


def test_a_command_of_another_user_keeps_the_tls_files_and_what_pass_env_names(
    tmp_path: Path,
) -> None:
    """FARM_TLS_CA/CERT/KEY are paths, not secrets: without them a `farm worker` command
    of another user spoke plain text to a TLS server. ``pass_env`` hands it more of the
    supervisor's variables by name, so that a secret need not be written into farm.toml."""
    inherited = {
        "PATH": "/usr/bin:/bin",
        "FARM_TLS_CA": "/etc/farm/ca.pem",
        "FARM_TLS_CERT": "/etc/farm/worker.pem",
        "FARM_TLS_KEY": "/etc/farm/worker.key",
        "FARM_KEY_FILE": "/var/lib/farm/executor.key",
        "DATABASE_PASSWORD": "s3cret",
        "AWS_SECRET_ACCESS_KEY": "k3y",
    }
    cfg = load(
        tmp_path, '[functions.p]\ncommand = "sh"\npass_env = ["DATABASE_PASSWORD", "UNSET"]\n'
    )
    spec = cfg.functions["p"].command
    assert spec is not None and spec.pass_env == ("DATABASE_PASSWORD", "UNSET")
    www = RunAs(name="www", uid=os.geteuid() + 1, gid=1, groups=(), home="/w")
    env = base_environ(CommandSpec(argv=spec.argv, user=www, pass_env=spec.pass_env), inherited)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "FARM_TLS_CA": "/etc/farm/ca.pem",
        "FARM_TLS_CERT": "/etc/farm/worker.pem",
        "FARM_TLS_KEY": "/etc/farm/worker.key",
        "DATABASE_PASSWORD": "s3cret",  # named; a name the supervisor lacks stays unset
        "HOME": "/w",
        "USER": "www",
        "LOGNAME": "www",
    }


@pytest.mark.parametrize(
    ("listen", "host"),
    [("127.0.0.1:4999", "127.0.0.1"), ("[::1]:4999", "::1"), ("[::]:4999", "::1")],
)
def test_a_command_worker_is_told_its_first_servers_host_and_port_apart(
    tmp_path: Path, listen: str, host: str
) -> None:
    # An IPv6-only farm's PHP workers got FARM_SERVERS=[::1]:4999 alone, which libgearman's
    # addServers reads as host "[" on port 4730: they connected nowhere.
    path = tmp_path / "farm.toml"
    path.write_text(HEAD.replace("127.0.0.1:4999", listen) + '[functions.p]\ncommand = "sh"\n')
    cfg = config.load(path)
    slot = Slot("p", 0, 0)
    env = command_env(cfg, cfg.functions["p"], slot, {"PATH": "/usr/bin"})
    assert env["FARM_SERVERS"].split(",")[0] == (f"[{host}]:4999" if ":" in host else listen)
    assert (env["FARM_SERVER_HOST"], env["FARM_SERVER_PORT"]) == (host, "4999")
