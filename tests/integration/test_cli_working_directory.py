"""Commands run from a working directory that was removed (`cd /tmp/x && rmdir /tmp/x`,
a checkout deleted under an open terminal): os.getcwd() raises there, and `farm up`,
`farm worker` and the client commands ended in its traceback."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from farm import Client, discovery
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

GONE = "farm: the working directory was removed: cd to an existing one"
POOL = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""


def from_removed_directory(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The farm CLI as a shell user starts it after its directory was removed. The
    interpreter itself, not a pyenv shim: the shim refuses such a directory before Python
    starts. With ``-m`` and not ``-c``: like the ``farm`` script, it leaves sys.path[0]
    other than "", which CPython 3.13.0-3.13.2 read as the directory and failed on
    (python/cpython#130932: `import socket` raised SystemError), before any of farm ran."""
    gone = tmp_path / "gone"
    gone.mkdir()
    farm = shlex.join([sys.executable, "-m", "farm", *args])
    script = f"cd {shlex.quote(str(gone))} && rmdir {shlex.quote(str(gone))} && exec {farm}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("FARM_CONFIG", "FARM_SERVERS", "GEARMAN_SERVERS"):  # the config decides
        env.pop(name, None)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, env=env)


def config(tmp_path: Path, listen: str) -> Path:
    """A farm of one Python pool, whose target the config check looks for in the working
    directory, reached at ``listen``; nothing at farm's default addresses."""
    path = tmp_path / "farm.toml"
    path.write_text(
        f'[server]\nlisten = ["{listen}"]\nstore = "none"\n\n'
        f'[supervisor]\ncontrol = "{tmp_path}/control.sock"\nmetrics = "off"\n\n'
        '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'
    )
    return path


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "args",
    [
        ["up", "--config", "{config}"],
        ["worker", "workers.text:reverse", "--server", "unix:{tmp}/gearman.sock"],
    ],
)
def test_commands_that_read_the_working_directory_say_it_was_removed(
    tmp_path: Path, args: list[str]
) -> None:
    path = config(tmp_path, f"unix:{tmp_path}/gearman.sock")
    given = [a.format(config=path, tmp=tmp_path) for a in args]
    out = from_removed_directory(tmp_path, *given)
    assert (out.returncode, out.stderr.strip()) == (2, GONE), out.stderr
    assert not (tmp_path / "control.sock").exists()  # refused before anything started


@pytest.mark.timeout(60)
def test_client_commands_need_no_working_directory(tmp_path: Path, farm_server: Server) -> None:
    # The config names where the farm answers; nothing in it is read against the working
    # directory, so `farm status` has no reason to refuse.
    path = config(tmp_path, farm_server.addr)
    out = from_removed_directory(tmp_path, "status", "--config", str(path))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    env = from_removed_directory(tmp_path, "submit", "--config", str(path), "-b", "f", "x")
    assert env.returncode == 0 and env.stdout.startswith("H:"), env.stderr


@pytest.mark.timeout(60)
def test_client_commands_with_no_config_need_no_working_directory(
    tmp_path: Path, no_local_farm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No config anywhere: the built-in default socket's path is absolute, yet discovery read
    # the working directory to resolve it, and `farm status`, farm.Client() and
    # discovery.local_farm() refused to run where it was removed.
    (no_local_farm / "farm").mkdir(mode=0o700)
    sock = no_local_farm / "farm" / "gearman.sock"
    srv = start_farm_server(unix=str(sock))
    try:
        wait_for("the Unix socket", sock.exists)
        out = from_removed_directory(tmp_path, "status")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        env = from_removed_directory(tmp_path, "submit", "-b", "f", "x")
        assert env.returncode == 0 and env.stdout.startswith("H:"), env.stderr
        gone = tmp_path / "gone-here"
        gone.mkdir()
        monkeypatch.chdir(gone)
        gone.rmdir()
        assert discovery.local_farm().unix == f"unix:{sock}"
        with Client() as client:
            assert client.echo(b"hi") == b"hi"
    finally:
        srv.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["ps", "status", "up", "reload"])
def test_a_relative_config_in_a_removed_directory_is_one_line(tmp_path: Path, command: str) -> None:
    # `farm ps --config ../farm.toml` where the directory was removed: the config was found,
    # then its folder (path.resolve()) ended in os.getcwd()'s traceback.
    config(tmp_path, f"unix:{tmp_path}/gearman.sock")
    out = from_removed_directory(tmp_path, command, "--config", "../farm.toml")
    said = out.stderr.strip()  # the control commands add how to reach the farm anyway
    assert out.returncode == 2 and said.startswith(GONE) and "\n" not in said, out.stderr


@pytest.mark.timeout(90)
def test_a_running_farm_whose_directory_was_removed_still_reloads(tmp_path: Path) -> None:
    # `farm up` started in a checkout removed later: every reload (SIGHUP, `farm reload`)
    # was refused with "the working directory was removed: cd to an existing one", which a
    # daemon cannot do. Its workers already load their targets from PYTHONPATH there.
    started = tmp_path / "started"
    started.mkdir()
    up = FarmUp(tmp_path, POOL, cwd=started)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        started.rmdir()
        up.write_config(POOL.replace("workers = 1", "workers = 2"))
        out = farm_cli("reload", "--config", str(up.config))
        assert out.returncode == 0, out.stdout + out.stderr
        up.wait_idle({"reverse": 2}, timeout=30)
        # A target found nowhere still says why the working directory was not searched.
        up.write_config(POOL.replace("workers.text:reverse", "nowhere:fn"))
        out = farm_cli("reload", "--config", str(up.config))
        assert out.returncode == 2 and "which was removed" in out.stderr, out.stderr
    finally:
        up.stop()


@pytest.mark.timeout(90)
def test_a_worker_restarted_after_the_directory_went_still_serves(tmp_path: Path) -> None:
    # `farm up` started in a checkout that was removed later: each restarted worker died
    # on os.getcwd() before it loaded its target, though the target is on PYTHONPATH.
    started = tmp_path / "started"
    started.mkdir()
    up = FarmUp(tmp_path, POOL, cwd=started)
    try:
        up.expect_notify("READY=1")
        [first] = up.wait_idle({"reverse": 1})
        started.rmdir()
        os.kill(first["pid"], signal.SIGKILL)

        def restarted() -> bool:
            rows = up.workers("reverse", "idle")
            return bool(rows) and rows[0]["pid"] != first["pid"]

        wait_for("the restarted worker idle", restarted, timeout=30)
        with Client(up.addr) as client:
            assert client.call("reverse", "abc", timeout=10) == b"cba"
    finally:
        up.stop()
