"""The CLI as people expect it: --version, completion, help in one style, usage mistakes in
one line and exit 2, and the command lines the docs show (what the commands print against a
running farm: test_cli_commands.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli import app
from farm.version import __version__
from tests.helpers import ROOT
from tests.helpers.clirun import cli, one_line_error
from tests.helpers.servers import free_port

runner = CliRunner()

WORKER_CMD = ["worker", "workers.text:reverse"]
LONG_UNIX = "unix:/tmp/" + "s" * 120 + ".sock"  # 130 bytes: a socket path holds 107

COMMANDS = [
    *("worker", "submit", "server", "status", "jobs", "up", "ps", "scale", "reload", "stop"),
    "check",
    "admin",
]


def test_version_and_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    out = runner.invoke(app, ["--version"])
    assert (out.exit_code, out.stdout.strip()) == (0, f"farm {__version__}")
    # typer picks the shell from the process tree; under `make` (CI) that is sh, which has
    # no completion. Ask for bash's script, as a user in bash would get it.
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    script = runner.invoke(app, ["--show-completion"], prog_name="farm")
    assert script.exit_code == 0 and "_FARM_COMPLETE" in script.stdout
    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout


def test_python_dash_m_farm_is_the_farm_command() -> None:
    # For a venv whose bin/ is not on PATH; the usage line names what was typed.
    done = subprocess.run(
        [sys.executable, "-m", "farm", "--version"], cwd=ROOT, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"farm {__version__}")
    bad = subprocess.run(
        [sys.executable, "-m", "farm", "bogus"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Usage: python -m farm" in bad.stderr, bad.stderr


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"server"}))  # server: argparse's
def test_an_option_missing_its_value_gets_the_usage_line(command: str) -> None:
    import typer.main

    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    takes_value = [p.opts[0] for p in params if p.opts[0].startswith("-") and not p.is_flag]
    assert takes_value, command
    out = runner.invoke(app, [command, takes_value[0]], prog_name="farm")
    assert out.exit_code == 2, out.output
    assert f"Usage: farm {command} [OPTIONS]" in out.output, out.output
    assert "requires an argument" in out.output and "Traceback" not in out.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_one_style_and_flags_take_no_metavar(command: str) -> None:
    out = runner.invoke(app, [command, "--help"], prog_name="farm")
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith(f"Usage: farm {command} [OPTIONS]")
    assert "\nOptions:\n" in out.stdout
    assert "<bool>" not in out.stdout
    assert re.search(r"^  -h, --help\s+Show this message and exit\.$", out.stdout, re.M) or (
        command == "server" and "-h, --help" in out.stdout  # gearmand's flags, by argparse
    )


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_dash_h_is_help_as_with_gearmand(command: str) -> None:
    out = runner.invoke(app, [command, "-h"] if command else ["-h"], prog_name="farm")
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith(f"Usage: farm {command} [OPTIONS]".replace("  ", " "))


def test_server_help_keeps_gearmands_flags() -> None:
    out = runner.invoke(app, ["server", "--help"], prog_name="farm")
    assert out.exit_code == 0
    for flag in ("-p, --port <PORT>", "-L, --listen <ADDR>", "-j, --job-retries <N>"):
        assert flag in out.stdout
    assert re.search(r"^  --exceptions\s+forward", out.stdout, re.M)  # a flag: no metavar
    assert re.search(r"^  -v\s+more", out.stdout, re.M)
    assert re.search(r"^  --verbose \[?<?LEVEL>?\]?\s+-v, or gearmand's level", out.stdout, re.M)
    assert re.search(r"^  -d, --daemon\s+detach", out.stdout, re.M)
    assert "--hints" not in out.stdout  # farm up's own, hidden


def test_jobs_help_says_which_limit_may_be_0() -> None:
    # "one larger, or 0 (no limit), may list more" meant the server's --max-queued-bytes and
    # read as if --max-reply 0 were no limit (it is refused: at least 1).
    out = runner.invoke(app, ["jobs", "--help"], prog_name="farm")
    assert out.exit_code == 0, out.output
    said = "".join(out.stdout.split())  # wrapped anywhere, "--max-" at a line's end too
    assert "aserverrunwithalarger--max-queued-bytes,or--max-queued-bytes0(nolimit)" in said
    assert "or0(nolimit)" not in said


def test_usage_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = cli("ps", "--watch", "--json", "--control", str(tmp_path / "c.sock"))
    assert bad.returncode == 2 and "--watch" in one_line_error(bad.stderr)
    bad = cli("ps", "--count", "2", "--control", str(tmp_path / "c.sock"))
    assert bad.returncode == 2 and "--watch" in one_line_error(bad.stderr)
    bad = cli("submit", "f", "x", env=dict(os.environ, FARM_SERVERS="bad:port"))
    assert bad.returncode == 2 and "$FARM_SERVERS" in one_line_error(bad.stderr)
    port = cli("jobs", "--server", "h:99999")
    assert port.returncode == 2 and "port" in one_line_error(port.stderr)
    nothing = cli("jobs", "--server", f"127.0.0.1:{free_port()}")
    assert nothing.returncode == 1 and "cannot read the jobs" in one_line_error(nothing.stderr)
    unknown = cli("nope")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        # The farm answered "reverse has slots 0 to 1", as if the slot were out of range.
        *(
            (
                ["restart", bad, "--control", "/no/such/control.sock"],
                f"{bad!r}: not POOL or POOL#SLOT (a slot is a number, e.g. reverse#0)",
            )
            for bad in ("reverse#x", "reverse#", "#0", "reverse#-1")
        ),
        # An empty listing, exit 0: no function has that name.
        (["jobs", "-f", ""], "--function must name a function, not be empty"),
    ],
)
def test_a_slot_or_function_that_can_name_nothing_is_a_usage_error(
    args: list[str], said: str
) -> None:
    # No farm to reach (127.0.0.1:1, no control socket): refused before one is asked.
    env = dict(os.environ, FARM_SERVERS="127.0.0.1:1")
    out = cli(*args, timeout=30, env=env)
    usage = f"(usage: farm {args[0]} --help)"
    assert (out.returncode, one_line_error(out.stderr)) == (2, f"farm: {said} {usage}")


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "f", "x", "--timeout", "inf"],
        ["submit", "f", "x", "--timeout", "nan"],
        ["submit", "f", "x", "--timeout", "-1"],
        ["submit", "f", "x", "--server", "bad:port"],
        ["submit", "f", "x", "--config", "/no/such/farm.toml"],
        ["worker", "workers.text:reverse", "--timeout", "nan"],
        # past CAN_DO_TIMEOUT's limit: the server would refuse it, the worker reconnect
        ["worker", "workers.text:reverse", "--timeout", "1e12"],
        ["status", "--config", "/no/such/farm.toml"],
        ["jobs", "--config", "/no/such/farm.toml"],
        ["scale", "reverse=1", "reverse=3"],
        ["stop", "--wait", "nan"],
        ["stop", "--wait", "-1"],
        ["ps", "--control", "/"],  # was "no supervisor answers at /", exit 1: the farm down?
        # so were these, or "AF_UNIX path too long"
        ["ps", "--control", LONG_UNIX[5:]],
        ["stop", "--control", LONG_UNIX[5:]],
        ["ps", "--control", "unix:/no/such/control.sock"],
        ["reload", "--control", "127.0.0.1:4730"],
        ["server", "--backlog", "0"],
        ["server", "--store", "none", "--backlog", "99999999999"],  # past a C int: a traceback
        ["server", "--worker-uid", "-1"],
        ["server", "--parent-pid", "-1"],
        ["server", "--parent-pid", "1", "--daemon"],
        ["server", "--supervised"],  # farm up's: no supervisor to leave a SIGTERM to
        ["server", "--store", "none", "-P", "/no/such/dir/farm.pid"],
        ["server", "--store", "none", "-l", "/no/such/dir/farm.log"],
        # a Unix socket path no socket can have: the worker retried its connect for ever,
        # the others said "AF_UNIX path too long" with exit 1, as if the server were down
        [*WORKER_CMD, "--server", LONG_UNIX],
        ["submit", "f", "x", "--server", LONG_UNIX],
        ["status", "--server", LONG_UNIX],
        ["jobs", "--server", LONG_UNIX],
        ["server", "--store", "none", "-L", LONG_UNIX],
        # no host: "Name or service not known", exit 1, as if the server were down (the
        # worker: retried for ever)
        *([*cmd, "--server", ":4730"] for cmd in (WORKER_CMD, ["submit", "f", "x"], ["status"])),
        ["jobs", "--server", ":4730"],
        # a unix: path where no socket is: "Connection refused ... is the farm up?", exit 1
        # (the worker: retried for ever)
        *([*cmd, "--server", "unix:/dev/null"] for cmd in (WORKER_CMD, ["submit", "f", "x"])),
        ["status", "--server", "unix:/dev/null"],
        ["server", "--store", "none", "-L", "unix:/tmp/short.sock", "--unix", LONG_UNIX[5:]],
        # --once draws one frame: the other count was dropped in silence (as ps's --count)
        ["top", "--once", "--iterations", "3", "--control", "/no/such/control.sock"],
        # an endpoint no scrape can reach: `farm top` ran on, saying it "did not answer"
        *(
            ["top", "--once", "--control", "/no/such/control.sock", "--metrics", where]
            for where in (":", ":9730", "host:99999", "unix:/tmp/m.sock", "http://", "ftp://h/m")
        ),
    ],
)
def test_bad_numbers_addresses_and_configs_are_usage_errors(args: list[str]) -> None:
    # 127.0.0.1:1 and a missing control socket: nothing may be reached before the check
    out = cli(*args, timeout=30, env=dict(os.environ, FARM_SERVERS="127.0.0.1:1"))
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert one_line_error(out.stderr).startswith(("farm: ", "farm server: "))


@pytest.mark.parametrize("command", [["submit", "f", "x"], WORKER_CMD])
def test_a_timeout_past_the_protocols_limit_names_the_flag_and_the_limit(
    command: list[str],
) -> None:
    # submit took up to 1e9 where the client takes MAX_TIMEOUT: 1e8 then failed in the
    # Client, as "timeout must be ... at most 31622400, or None", naming no flag.
    out = cli(
        *command, "--timeout", "1e8", timeout=30, env=dict(os.environ, FARM_SERVERS="127.0.0.1:1")
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    said = one_line_error(out.stderr)
    # A worker's timeout has a floor too (MIN_TIMEOUT), which its message names.
    bounds = "from 1 to 31622400" if command == WORKER_CMD else "> 0 and at most 31622400"
    assert said.startswith(f"farm: --timeout must be a number of seconds {bounds}"), said


@pytest.mark.parametrize("command", [["check"], ["reload"]])
def test_check_and_reload_bound_their_timeout_to_a_day_as_the_job_commands_word_it(
    command: list[str],
) -> None:
    # Both said "above 0 and at most 86400", each from its own copy of the bound.
    out = cli(*command, "--timeout", "1e6", timeout=30)
    assert (out.returncode, one_line_error(out.stderr)) == (
        2,
        "farm: --timeout must be a number of seconds > 0 and at most 86400, not 1000000.0"
        f" (usage: farm {command[0]} --help)",
    )


@pytest.mark.parametrize("value", ["0.5", "0"])
def test_a_worker_timeout_under_the_floor_is_refused_before_the_target_is_loaded(
    value: str,
) -> None:
    # 0.5 passed the flag's "> 0", the target was imported (a module that runs code, or
    # is missing, as here), and only register() refused it, naming no flag; and its
    # message said "> 0" while refusing anything under 1 s.
    out = cli(
        "worker",
        "no_such_module_here:run",
        "--timeout",
        value,
        timeout=30,
        env=dict(os.environ, FARM_SERVERS="127.0.0.1:1"),
    )
    assert (out.returncode, one_line_error(out.stderr)) == (
        2,
        f"farm: --timeout must be a number of seconds from 1 to 31622400, not {float(value)}"
        " (usage: farm worker --help)",
    )


WORKER = ["worker", "workers.text:reverse"]
#: Every command taking --config, with what else it needs to get as far as reading it.
CONFIG_COMMANDS = [
    ["up"],
    ["check"],
    ["ps"],
    ["scale", "reverse=1"],
    ["reload"],
    ["stop"],
    ["restart"],
    ["top", "--once"],
    WORKER,
    ["submit", "f", "x"],
    ["status"],
    ["jobs"],
    ["admin", "status"],
    ["backup", "/nonexistent/copy.db"],
]


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda args: args[0])
def test_an_empty_config_path_is_a_usage_error(command: list[str]) -> None:
    import typer.main

    group = typer.main.get_group(app)
    taking = {n for n, c in group.commands.items() if any("--config" in p.opts for p in c.params)}
    assert taking == {args[0] for args in CONFIG_COMMANDS}  # every one of them
    # typer reads '' as the path '.': "farm: .: is a directory", from a $CONFIG left unset.
    for empty in (["--config", ""], ["-c", ""], ["--config="]):
        out = cli(*command, *empty, timeout=30, env=dict(os.environ, FARM_SERVERS="127.0.0.1:1"))
        said = one_line_error(out.stderr)
        assert (out.returncode, said) == (
            2,
            "farm: --config must name a config file, not be empty"
            f" (usage: farm {command[0]} --help)",
        )


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda args: args[0])
def test_a_config_file_with_no_settings_is_refused_by_every_command(
    command: list[str], tmp_path: Path
) -> None:
    """A half-written farm.toml (only a comment left): the commands that ask the farm's
    server (status, submit, worker...) went to the built-in defaults' farm, port 4730,
    another farm's, while `farm ps` refused the file."""
    config = tmp_path / "farm.toml"
    config.write_text("# [server]\n# listen = ['unix:/srv/a/gearman.sock']\n")
    out = cli(*command, "-c", str(config), timeout=30)
    assert out.returncode == 2, out.stderr
    assert one_line_error(out.stderr).startswith(f"farm: {config}: has no settings"), out.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([*WORKER, "--name", "a\nb"], "--name 'a\\nb' holds a control character"),
        ([*WORKER, "--name", "x" * 600], "--name is 600 bytes long; job servers take at most 512"),
        # \udcff is what Python makes of a \xff byte the locale cannot decode. (A name or
        # key with one goes out as that byte: test_client_cli.)
        ([*WORKER, "--client-id", "\udcff"], "--client-id '\\xff' is not UTF-8 text"),
        (["scale", "\udcff"], "'\\xff' is not NAME=COUNT"),  # these said '\\udcff'
        (["scale", "\udcff=1", "\udcff=2"], "'\\xff' is named twice"),
        (["submit", "--priority", "\udcff", "f", "x"], "one of high, normal, low, not '\\xff'"),
        (["worker", "\udcff"], "target '\\xff' must look like MODULE:FUNCTION"),
        (["submit", "a\tb", "x"], "FUNCTION 'a\\tb' holds a control character"),
        # farm.toml's rule for a target: these were "cannot load .rel:x: TypeError: the
        # 'package' argument is required ...", "... No module named '/srv/w'"
        *(
            (["worker", bad], f"target {bad!r} must look like MODULE:FUNCTION")
            for bad in (".rel:x", "/srv/w:run", "a:b:c", "workers.text:reverse()")
        ),
        # a name Python reads as another (NFKC: \ufb01 is fi): importlib looked for a file
        # named as written, "cannot load \ufb01x:run: ModuleNotFoundError"
        (
            ["worker", "\ufb01x:run"],
            "must look like MODULE:FUNCTION, e.g. workers.text:reverse; Python reads it as"
            " 'fix:run': write it in that normal form",
        ),
    ],
)
def test_names_the_server_would_refuse_are_usage_errors(args: list[str], said: str) -> None:
    # A worker with such a name logged the server's refusal once and then served nothing
    # for ever; a byte that is not UTF-8 ended in a traceback or a bare codec message.
    out = cli(*args, timeout=20, env=dict(os.environ, FARM_SERVERS="127.0.0.1:1"))
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert said in one_line_error(out.stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("found", [False, True], ids=["--config", "working directory"])
def test_a_config_server_with_no_host_is_named_by_file_and_key(tmp_path: Path, found: bool) -> None:
    # Only farm check said so: submit said "--server: server address ':4730': names no
    # host" (no --server was given), status "the default server: ...".
    path = tmp_path / "farm.toml"
    path.write_text('[supervisor]\nservers = [":4730"]\n')
    env = {k: v for k, v in os.environ.items() if k not in ("FARM_CONFIG", "FARM_SERVERS")}
    env = dict(env, PYTHONPATH=str(ROOT), GEARMAN_SERVERS="")
    named = "farm.toml" if found else str(path)
    said = f"farm: {named}: supervisor.servers: ':4730' names no host; write 127.0.0.1:4730"
    for command in (["check"], ["submit", "f", "x"], ["status"], ["jobs"], WORKER):
        args = [*command] if found else [*command, "--config", str(path)]
        code = "from farm.cli import main; main()"
        out = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=tmp_path if found else ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert out.returncode == 2, (command, out.stderr)
        assert one_line_error(out.stderr) == f"{said} for this one", command


def test_a_refused_store_leaves_no_pid_file(tmp_path: Path) -> None:
    pid = tmp_path / "farm.pid"
    out = cli("server", "-p", str(free_port()), "--store", str(tmp_path), "-P", str(pid))
    assert out.returncode == 2 and "job store" in one_line_error(out.stderr)
    assert not pid.exists()  # a pid file naming a dead process misleads init scripts


@pytest.mark.parametrize(
    "args",
    [
        *([*cmd, "--server", "a..b:1"] for cmd in (WORKER_CMD, ["submit", "f", "x"], ["status"])),
        ["jobs", "--server", f"{'a' * 64}.example:1"],
        ["server", "--store", "none", "-L", f"{'a' * 64}.example:1"],
    ],
)
def test_a_host_no_resolver_is_asked_for_is_a_usage_error(args: list[str]) -> None:
    # An empty label or one of 64 letters failed at the connect, in IDNA's words ("label
    # empty or too long"): `farm status` and `farm jobs` with exit 1, as if the farm were
    # down, `farm server` too, and `farm worker` retried it for ever.
    out = cli(*args, timeout=30, env=dict(os.environ, FARM_SERVERS="127.0.0.1:1"))
    assert out.returncode == 2, (out.returncode, out.stderr)
    line = one_line_error(out.stderr)
    assert line.startswith(("farm: ", "farm server: ")), line
    assert "is not a host name or address" in line and "idna" not in line, line
