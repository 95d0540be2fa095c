"""The supervisor's commands as users meet them: one clear line and exit code 2 for mistakes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm import config
from farm.cli import app
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp, farm_cli
from tests.helpers.unprivileged import unprivileged

runner = CliRunner()


def one_line_error(result: object) -> str:
    text = (getattr(result, "stderr", "") or getattr(result, "output", "")).strip()
    assert len(text.splitlines()) == 1, text
    assert text.startswith("farm: "), text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[functions.a]\ntarget = 'workers.text:reverse'\nworkers = -2\n", "functions.a.workers"),
        ("[functions.a]\ntarget = 'workers.nothere:f'\n", "no module named 'workers.nothere'"),
        ("[functions.a]\ntarget = 'workers.text:reverse'\nwrkers = 1\n", "did you mean 'workers'"),
        ("[server]\nlisten = 4730\n[functions.a]\ntarget = 'workers.text:reverse'\n", "listen"),
        ("[functions.a\n", "not valid TOML"),
        # It ran the built-in farm (port 4730, a farm.python worker per core).
        ("", "has no settings"),
        ("# [functions.a]\n# target = 'workers.text:reverse'\n", "has no settings"),
    ],
)
def test_bad_config_is_one_line_and_exit_2_before_anything_starts(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = tmp_path / "farm.toml"
    path.write_text(body)
    result = runner.invoke(app, ["up", "--config", str(path)])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert str(path) in line and expected in line
    assert not (tmp_path / "control.sock").exists()


def test_a_control_socket_the_system_refuses_is_a_config_error(tmp_path: Path) -> None:
    # /proc passed every look before start, and bind() failed: that was "farm: cannot
    # start: [Errno 2] ...", exit 1, which systemd restarts in a loop.
    path = tmp_path / "farm.toml"
    path.write_text(
        f'[server]\nlisten = ["unix:{tmp_path}/g.sock"]\nstore = "none"\n'
        '[supervisor]\ncontrol = "/proc/ctl.sock"\nmetrics = "off"\n'
        '[functions.a]\ntarget = "workers.text:reverse"\n'
    )
    result = farm_cli("up", "--config", str(path))
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"farm: {path}: supervisor.control: /proc is a kernel filesystem, where no file can"
        " be made; put the socket elsewhere, e.g. /run/farm/control.sock"
    )
    # What no look before start can see (a directory this user may not write) is found
    # making the socket: the same kind of line, for `farm up` to exit 2 with.
    from farm.errors import ConfigError
    from farm.pools.controlserver import open_control

    with pytest.raises(ConfigError) as info:
        open_control("/proc/ctl.sock", str(path))
    assert str(info.value) == (
        f"{path}: supervisor.control: cannot make the socket /proc/ctl.sock: No such file or"
        " directory; set it to a path in a directory the farm may write, e.g."
        " /run/farm/control.sock"
    )


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "no such config file" in one_line_error(result)


def test_a_config_that_is_no_regular_file_and_an_empty_control_are_usage_errors() -> None:
    # /dev/null was "no such config file" (it is there); --control '' was the socket's
    # "Invalid argument", exit 1.
    result = runner.invoke(app, ["ps", "-c", "/dev/null"])
    assert result.exit_code == 2
    assert "/dev/null: is not a regular file, not a config file" in one_line_error(result)
    result = runner.invoke(app, ["ps", "--control", ""])
    assert result.exit_code == 2
    assert "--control must be the path of the control socket" in one_line_error(result)


@pytest.mark.parametrize("arg", ["reverse", "reverse=", "reverse=two", "=3", "a b=1", "x=+-1"])
def test_bad_scale_arguments_are_exit_2(tmp_path: Path, arg: str) -> None:
    result = runner.invoke(app, ["scale", arg, "--control", str(tmp_path / "c.sock")])
    assert result.exit_code == 2
    assert "NAME=COUNT" in one_line_error(result)


def test_commands_without_a_supervisor_say_so(tmp_path: Path) -> None:
    for command in (["ps"], ["scale", "a=1"], ["reload"], ["stop"]):
        result = runner.invoke(app, [*command, "--control", str(tmp_path / "c.sock")])
        assert result.exit_code == 1, command
        assert "no supervisor answers" in one_line_error(result)


def test_the_example_config_is_valid() -> None:
    cfg = config.load(ROOT / "systemd" / "farm.toml")
    assert cfg.supervisor.control == "/run/farm/control.sock"
    assert cfg.server.unix == "/run/farm/gearman.sock"
    assert cfg.worker_servers == ("unix:/run/farm/gearman.sock",)
    assert {"reverse", "resize", "thumbnail", "pbkdf2"} <= set(cfg.functions)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (no systemd on this machine)")
    unit = (ROOT / "systemd" / "farm.service").read_text()
    for key in ("Type=notify", "NotifyAccess=main", "KillMode=mixed", "WatchdogSec=",
                "ExecReload=", "Restart=on-failure", "RuntimeDirectory=farm",
                "StateDirectory=farm", "User=farm", "ProtectSystem=strict",
                "OOMPolicy=continue"):  # fmt: skip
        assert key in unit, key
    # verify checks that ExecStart exists: point it at this machine's farm
    farm = shutil.which("farm") or sys.executable
    (tmp_path / "farm.service").write_text(unit.replace("/usr/local/bin/farm", farm))
    out = subprocess.run(
        [analyze, "verify", str(tmp_path / "farm.service")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "farm.service" not in out.stderr, out.stderr  # no warnings about our unit


@pytest.mark.parametrize("command", [["ps"], ["stop"], ["scale", "a=1"], ["reload"], ["top"]])
def test_a_broken_config_names_the_way_to_the_running_farm(tmp_path: Path, command) -> None:
    """An edit left farm.toml unreadable while the farm runs: the commands that only need
    its control socket say how to reach it anyway."""
    path = tmp_path / "farm.toml"
    path.write_text('[functions.f]\nworkers = "bogus\n')
    result = runner.invoke(app, [*command, "--config", str(path)])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert str(path) in line and "--control PATH" in line


@pytest.mark.parametrize("command", [["ps"], ["stop"], ["scale", "a=2"], ["reload"]])
def test_steering_commands_need_only_the_control_path(tmp_path: Path, command: list[str]) -> None:
    # The workers' modules are not importable here (no PYTHONPATH for them): commands that
    # only talk to the supervisor must not load and check the pools.
    cfg = tmp_path / "farm.toml"
    control = tmp_path / "control.sock"
    cfg.write_text(
        f'[supervisor]\ncontrol = "{control}"\n[functions.a]\ntarget = "elsewhere.mod:fn"\n'
    )
    result = runner.invoke(app, [*command, "--config", str(cfg)])
    text = one_line_error(result)
    assert result.exit_code == 1, text
    assert f"no supervisor answers at {control}" in text, text


def test_a_control_path_naming_a_file_refuses_and_keeps_the_file(tmp_path: Path) -> None:
    # A typo (control = "/etc/farm/farm.toml") deleted the file it named.
    from farm.errors import FarmError
    from farm.pools.controlserver import ControlServer

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    with pytest.raises(FarmError, match="not a socket"):
        ControlServer(str(precious))
    assert precious.read_text() == "keep me"


def test_a_reload_of_an_emptied_config_keeps_the_farm_as_it_was(tmp_path: Path) -> None:
    # A file truncated by a failed write, then `systemctl reload farm`: the farm took it for
    # "no file", drained every pool and started the built-in ones in their place.
    up = FarmUp(tmp_path, '[functions.rev]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        (before,) = up.wait_idle({"rev": 1})
        up.config.write_text("")
        out = farm_cli("reload", "--control", up.control)
        assert out.returncode == 2, out.stdout
        assert str(up.config) in one_line_error(out) and "has no settings" in out.stderr
        after = [(r["function"], r["pid"], r["state"]) for r in up.workers()]
        assert after == [("rev", before["pid"], "idle")]  # no pool added, drained or replaced
    finally:
        assert up.stop() == 0


def test_a_state_directory_that_cannot_be_made_is_said_and_the_farm_runs(tmp_path: Path) -> None:
    # $XDG_STATE_HOME under a file (as a read-only one): the Executor's key could not be
    # made, and `farm up` ended with "farm: cannot start: [Errno 20] Not a directory: ...",
    # naming neither the key file nor what to set. The store's fallback to memory (the
    # default's, when the directory is not writable) was not said at all.
    blocker = tmp_path / "afile"
    blocker.write_text("")
    farm = FarmUp(
        tmp_path,
        "[functions.reverse]\ntarget = 'workers.text:reverse'\nworkers = 1\n",
        extra_env={"XDG_STATE_HOME": str(blocker / "state"), "FARM_KEY_FILE": ""},
    )
    try:
        farm.expect_notify("READY=1")
        log = farm.read_log()
        key = blocker / "state" / "farm" / "executor.key"
        assert f"ERROR cannot create farm.Executor's key file {key}: Not a directory" in log
        assert "$XDG_STATE_HOME" in log
        assert "WARNING background jobs are kept in memory only" in log
    finally:
        assert farm.stop() == 0


def test_a_store_of_none_chosen_in_the_config_is_not_told_as_a_default_that_failed(
    tmp_path: Path,
) -> None:
    # It was warned of with "the default, a file in ~/.local/state/farm, needs that
    # directory writable", which read as if the default had been tried and had failed.
    up = FarmUp(tmp_path, "[functions.reverse]\ntarget = 'workers.text:reverse'\nworkers = 1\n")
    try:
        up.expect_notify("READY=1")
        log = up.read_log()
        assert ' stops ([server] store = "none" in the config)' in log, log
        assert "the default" not in log, log
    finally:
        assert up.stop() == 0


def test_farm_up_says_where_its_control_socket_and_store_are(tmp_path: Path) -> None:
    # A newcomer's `farm up` on the built-in defaults logged the Executor's key file and the
    # server's addresses, but neither where `farm ps` and `farm stop` reach it nor where its
    # background jobs are kept: the paths the defaults choose per user and environment.
    pool = "[functions.reverse]\ntarget = 'workers.text:reverse'\nworkers = 1\n"
    store = tmp_path / "queue.db"
    up = FarmUp(tmp_path, pool, store=store)
    try:
        up.expect_notify("READY=1")
        log = up.read_log()
        assert f"control socket: {up.control})" in log
        assert f"INFO background jobs are stored in {store}" in log
    finally:
        assert up.stop() == 0


@pytest.mark.parametrize("pythonpath_tail", ["", ":"])
def test_a_second_farm_up_on_the_same_config_says_who_runs_in_one_line(
    tmp_path: Path, pythonpath_tail: str
) -> None:
    # The second `farm up` warned that background jobs are kept in memory only (its own
    # server's store, which it would never start) before saying that another supervisor
    # runs, and did not say which. So it did of the PYTHONPATH entries it would drop for
    # its server and workers (an empty one, from `export PYTHONPATH=$PYTHONPATH:`).
    farm = FarmUp(tmp_path, "[functions.reverse]\ntarget = 'workers.text:reverse'\nworkers = 1\n")
    try:
        farm.expect_notify("READY=1")
        cli = [sys.executable, "-c", "from farm.cli import main; main()"]
        env = dict(farm.env, PYTHONPATH=farm.env["PYTHONPATH"] + pythonpath_tail)
        second = subprocess.run(
            [*cli, "up", "-c", farm.config_arg],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1, second.stderr
        assert second.stdout == ""
        line = one_line_error(second)
        assert f"another supervisor (pid {farm.proc.pid}) is running" in line
        assert farm.control in line
    finally:
        assert farm.stop() == 0


def test_a_second_farm_up_that_may_not_write_the_store_still_says_who_runs(
    tmp_path: Path,
) -> None:
    # Another user's `farm up` on root's config (or this user's, on a store since locked)
    # said "server.store: ... not writable", exit 2: the store was checked before the
    # control socket, where a second `farm up` is to stop first, naming who runs.
    pool = "[functions.reverse]\ntarget = 'workers.text:reverse'\nworkers = 1\n"
    farm = FarmUp(tmp_path, pool, start=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    store = locked / "queue.db"
    farm.config.write_text(farm.config.read_text().replace('store = "none"', f'store = "{store}"'))
    farm.start()
    try:
        farm.expect_notify("READY=1")
        locked.chmod(0o555)  # now, not before: the first made its store there
        argv = [sys.executable, "-c", "from farm.cli import main; main()", "up", "-c"]
        second = subprocess.run(
            unprivileged([*argv, farm.config_arg]),
            cwd=tmp_path,
            env=farm.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1, second.stderr
        line = one_line_error(second)
        assert f"another supervisor (pid {farm.proc.pid}) is running" in line
    finally:
        locked.chmod(0o755)  # the store's journal comes and goes beside it
        assert farm.stop() == 0


def test_a_control_path_changed_in_the_file_names_where_the_farm_answers(
    tmp_path: Path,
) -> None:
    # `[supervisor] control` edited, then `systemctl reload farm` (ExecReload reads the
    # file): "no supervisor answers at NEW", as if the farm were down, while it ran and
    # answered at the path it started with.
    up = FarmUp(tmp_path, "[functions.reverse]\ntarget = 'workers.text:reverse'\nworkers = 1\n")
    try:
        up.expect_notify("READY=1")
        moved = tmp_path / "moved.sock"
        up.config.write_text(up.config.read_text().replace(up.control, str(moved)))
        out = farm_cli("reload", "-c", str(up.config))
        line = one_line_error(out)
        assert out.returncode == 1, line
        assert f"no supervisor answers at {moved}" in line
        assert f"pid {up.proc.pid}" in line and f"--control {up.control}" in line
        assert "restart" in line  # the new path takes one
        out = farm_cli("reload", "--control", up.control)  # the fix the line names
        assert out.returncode == 0, out.stderr
        assert "[supervisor] changed" in out.stderr
    finally:
        assert up.stop() == 0


def up_unprivileged(up: FarmUp, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`farm up -c` of ``up``'s config, run without root's file access override (setpriv),
    to its end: a farm up refused before anything starts."""
    argv = [sys.executable, "-c", "from farm.cli import main; main()", "up", "-c", str(up.config)]
    return subprocess.run(
        unprivileged(argv), env=up.env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("where", ["queue.db", "sub/queue.db"])
def test_a_store_this_user_cannot_write_is_one_line_before_anything_starts(
    tmp_path: Path, where: str
) -> None:
    # `[server] store` in a directory the farm's user may not write (made by root, say):
    # the supervisor warned "cannot create ...", started the job server, which failed with
    # its own line, then logged two more and exited 1, which systemd restarts for ever.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    up = FarmUp(
        tmp_path, "[functions.r]\ntarget = 'workers.text:reverse'\nworkers = 1\n", start=False
    )
    store = locked / where
    up.config.write_text(up.config.read_text().replace('store = "none"', f'store = "{store}"'))
    out = up_unprivileged(up, tmp_path)
    assert out.returncode == 2, out.stderr
    line = one_line_error(out)
    assert line.startswith(f"farm: {up.config}: server.store: "), line
    assert str(locked) in line and 'or "none"' in line, line
    assert list(locked.iterdir()) == []
    assert not Path(up.control).exists()  # checked once it took it: the path is let go


def test_a_unix_socket_this_user_cannot_make_is_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    # As the store (above): the server's "cannot listen on unix:...: permission denied",
    # two more lines and exit 1.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    up = FarmUp(
        tmp_path, "[functions.r]\ntarget = 'workers.text:reverse'\nworkers = 1\n", start=False
    )
    up.config.write_text(up.config.read_text().replace(str(up.unix), str(locked / "g.sock")))
    out = up_unprivileged(up, tmp_path)
    assert out.returncode == 2, out.stderr
    line = one_line_error(out)
    assert line.startswith(f"farm: {up.config}: server.listen: cannot make the socket "), line
    assert f"{locked} is not writable by this user" in line, line


def test_a_reload_by_an_emptied_config_naming_its_control_socket_says_it_is_empty(
    tmp_path: Path,
) -> None:
    # As `systemctl reload` runs it, by --config: the file's control socket went with its
    # settings, and the line said the farm answered elsewhere ("[supervisor] control
    # changed since"), exit 1, not that the file was empty.
    up = FarmUp(tmp_path, '[functions.rev]\ntarget = "workers.text:reverse"\nworkers = 1\n')
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"rev": 1})
        up.config.write_text("# truncated\n")
        out = farm_cli("reload", "--config", str(up.config))
        assert out.returncode == 2, out.stderr
        assert one_line_error(out).startswith(f"farm: {up.config}: has no settings")
    finally:
        assert up.stop() == 0
