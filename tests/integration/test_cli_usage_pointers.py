"""Where a usage mistake's line sends the user: farm's own exit-2 errors point at the command's
--help (a config file's error at the file instead), `farm --version` takes nothing else, a
`unix:` server that is no socket is named where it was given (--server, $FARM_SERVERS,
$GEARMAN_SERVERS), and `farm server --max-packet` says which limits to raise with it
(split from test_cli_usage.py, which passed 400 lines)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.clirun import cli, one_line_error

WORKER_CMD = ["worker", "workers.text:reverse"]


@pytest.mark.parametrize(
    "args",
    [
        ["scale", "foo", "--control", "/no/such/control.sock"],
        ["ps", "--count", "5", "--control", "/no/such/control.sock"],
        ["submit", "rev", "x", "--priority", "urgent"],
        ["top", "--sort", "bogus", "--control", "/no/such/control.sock"],
    ],
    ids=lambda args: args[0],
)
def test_farms_own_usage_errors_point_at_the_commands_help(args: list[str]) -> None:
    # click's usage errors print its usage line; farm's own checks said one line and no
    # more, where `farm server`'s say "(usage: farm server --help)".
    env = dict(os.environ, FARM_SERVERS="127.0.0.1:1")  # nothing to reach: refused before
    out = cli(*args, timeout=30, env=env)
    assert out.returncode == 2, out.stderr
    assert one_line_error(out.stderr).endswith(f" (usage: farm {args[0]} --help)"), out.stderr


def test_a_config_files_error_points_at_the_file_not_at_help(tmp_path: Path) -> None:
    # The line names the file, the key and the fix; farm check and farm up say the same.
    (tmp_path / "farm.toml").write_text("[server]\nbogus = 1\n")
    out = cli("check", "-c", str(tmp_path / "farm.toml"), timeout=60)
    assert out.returncode == 2, out.stderr
    said = one_line_error(out.stderr)
    assert "server.bogus: unknown key" in said and "--help" not in said, said


@pytest.mark.parametrize("extra", [["extra"], ["ps"], ["--help"]])
def test_version_with_anything_else_is_a_usage_error(extra: list[str]) -> None:
    # It printed the version and exited 0, the rest never read.
    out = cli("--version", *extra, timeout=30)
    assert out.returncode == 2 and out.stdout == "", (out.stdout, out.stderr)
    assert "--version takes nothing else: give farm --version alone" in out.stderr
    assert "Usage:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("helped", ["--help", "-h"])
def test_help_asked_before_version_is_shown(helped: str) -> None:
    # The --version check made `farm --help --version` a usage error, exit 2, where click
    # showed the help, asked for first, and exit 0.
    out = cli(helped, "--version", timeout=30)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.startswith("Usage:") and "\nCommands:\n" in out.stdout, out.stdout


def complete(words: str) -> subprocess.CompletedProcess[str]:
    """What bash's <TAB> gets from `farm` at the end of ``words`` (its completion script
    runs farm so, with the words typed so far)."""
    env = dict(os.environ, _FARM_COMPLETE="complete_bash", COMP_WORDS=words)
    env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    code = "from farm.cli.app import app; app(prog_name='farm')"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def test_completion_after_version_completes() -> None:
    # The --version check raised while click only completed: a UsageError traceback for
    # each <TAB> after `farm --version `; and the version was offered as a completion.
    for words in ("farm --version status ", "farm --version st"):
        out = complete(words)
        assert out.returncode == 0 and out.stderr == "", (words, out.stderr)
    assert complete("farm --version st").stdout.split() == complete("farm st").stdout.split()
    assert set(complete("farm st").stdout.split()) == {"status", "stop"}


@pytest.mark.parametrize(
    ("given", "command"),
    [
        *(("--server", cmd) for cmd in (["status"], ["jobs"])),
        *(("FARM_SERVERS", c) for c in (["status"], ["jobs"], ["submit", "f", "x"], WORKER_CMD)),
        *(("GEARMAN_SERVERS", cmd) for cmd in (["status"], WORKER_CMD)),
    ],
)
def test_a_unix_server_that_is_no_socket_is_named_where_it_was_given(
    tmp_path: Path, given: str, command: list[str]
) -> None:
    # From $FARM_SERVERS or $GEARMAN_SERVERS (--server's was refused already, in a line that
    # stopped at "give the job server's"): "Connection refused (... is the farm up?)", exit
    # 1, and the worker retried its connect for ever.
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_SERVERS", "FARM_CONFIG"))}
    args = [*command, "--server", f"unix:{tmp_path}"] if given == "--server" else command
    if given != "--server":
        env[given] = f"unix:{tmp_path}"
    out = cli(*args, timeout=20, env=env)
    assert out.returncode == 2, (out.returncode, out.stderr)
    source = given if given == "--server" else f"${given}"
    assert one_line_error(out.stderr).startswith(
        f"farm: {source} unix:{tmp_path}: not a socket; give the job server's Unix socket"
        " (e.g. unix:/run/farm/gearman.sock) or its HOST:PORT"
    ), out.stderr


@pytest.mark.parametrize(
    ("given", "said"),
    [
        # Only --max-packet was given: "--max-partial-bytes must be at least --max-packet".
        (
            [],
            "--max-packet 300000000 is over the default --max-partial-bytes (268435456) and"
            " --max-unread-bytes (268435456): a packet that large needs --max-partial-bytes"
            " and --max-unread-bytes raised too, to at least 300000000",
        ),
        (
            ["--max-partial-bytes", "300000000"],
            "--max-packet 300000000 is over the default --max-unread-bytes (268435456): a"
            " packet that large needs --max-unread-bytes raised too, to at least 300000000",
        ),
        (
            ["--max-partial-bytes", "299999999"],
            "--max-partial-bytes must be at least --max-packet (one whole packet)",
        ),
    ],
)
def test_a_max_packet_over_a_default_limit_says_which_to_raise(given: list[str], said: str) -> None:
    out = cli("server", "--store", "none", "--max-packet", "300000000", *given, timeout=30)
    assert out.returncode == 2, out.stderr
    assert one_line_error(out.stderr) == f"farm server: {said} (usage: farm server --help)"
