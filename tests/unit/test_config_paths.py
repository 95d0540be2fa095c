"""Where farm finds its config and keeps its state: the search order, the defaults' runtime and
state directories (XDG, systemd, no $HOME), and files or directories this user may not reach.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from farm import config, discovery
from farm.errors import ConfigError
from farm.paths import runtime_dir, state_dir
from tests.helpers import ROOT
from tests.helpers.configs import GOOD, write
from tests.helpers.servers import free_port
from tests.helpers.unprivileged import homeless, unprivileged


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


def test_a_state_directory_this_user_may_not_reach_is_not_taken(tmp_path: Path) -> None:
    # `runuser -u nobody -- farm up` keeps nobody's HOME, /nonexistent, which on a host
    # where something made it is root's, mode 0700: the default store's look for the nearest
    # directory that exists raised PermissionError, and `farm up` ended in a traceback
    # rather than keep the jobs in memory with a warning, as the docs say. Such a home is
    # now passed over (farm.paths.state_dir): the next one, or memory where none is left.
    locked = tmp_path / "home"
    locked.mkdir(mode=0o000)
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
    env |= {"XDG_STATE_HOME": str(locked / ".local/state"), "XDG_RUNTIME_DIR": str(tmp_path)}
    code = "from farm import config; print(config.load(None).server.store)"
    argv = unprivileged([sys.executable, "-c", code])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(locked) not in out.stdout, out.stdout


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


@pytest.mark.parametrize(
    ("name", "why"),
    [("x" * 300, "File name too long"), ("loop", "Too many levels of symbolic links")],
    ids=["a name too long", "a loop of links"],
)
def test_a_config_path_no_file_can_be_at_says_why(tmp_path: Path, name: str, why: str) -> None:
    # A name over 255 bytes was OSError out of is_dir(), a traceback from every command
    # given it; a loop of links was "no such config file".
    (tmp_path / "loop").symlink_to("loop")
    path = tmp_path / name
    with pytest.raises(ConfigError) as info:
        discovery.find_config(path)
    assert str(info.value) == f"{path}: {why} (--config); check the path"


def test_a_listen_whose_socket_path_holds_a_nul_is_one_line_for_clients_too(
    tmp_path: Path,
) -> None:
    # farm check refused it (a path holds no NUL); farm.Client() and farm status, reading
    # the same file for where the farm is, died of a ValueError traceback ("embedded null
    # byte"), or said "the default server: embedded null byte".
    from farm.discovery import client_servers

    path = tmp_path / "farm.toml"
    path.write_text('[server]\nlisten = ["unix:/run/a\\u0000b"]\n')
    with pytest.raises(ConfigError) as info:
        client_servers(path)
    said = str(info.value)
    assert said.startswith(f"{path}: server.listen: ") and "NUL" in said, said
