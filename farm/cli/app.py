"""The typer application every command module registers on."""

from __future__ import annotations

import io
import itertools
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer._click.core import Context  # typer >= 0.26 vendors click, and names no public
from typer._click.exceptions import UsageError  # base of its usage errors
from typer._click.globals import get_current_context
from typer.core import TyperCommand, TyperGroup

from farm.errors import ConfigError, WorkingDirectoryGone
from farm.version import __version__

# What the command modules take from here; Context and UsageError among them, so that
# typer's private import of click's classes stands in this one module.
__all__ = [
    "MAX_INTERVAL",
    "MAX_WAIT",
    "SERVER_DEFAULT_HELP",
    "ConfigOption",
    "Context",
    "ControlOption",
    "FarmCommand",
    "UsageError",
    "app",
    "ask_supervisor",
    "control_socket",
    "fail",
    "main",
    "metrics_url",
    "named_config",
    "own_row",
    "refuse_env_non_sockets",
    "refuse_non_sockets",
    "seconds",
    "typed",
]


class FarmGroup(TyperGroup):
    """The `farm` command itself. Its ``--version`` is eager (it prints and exits as it is
    read), so `farm --version extra` printed the version, exit 0, the rest never read.

    Not while click only completes a command line (``resilient_parsing``: the shell's
    <TAB> after `farm --version ` printed a UsageError traceback), nor after -h/--help: help
    asked for first is shown, as click did before this check (`farm --help --version`)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        own = list(itertools.takewhile(lambda a: a.startswith("-") and a != "--", args))
        if "--version" in own and len(args) > 1 and not ctx.resilient_parsing:
            helped = [own.index(h) for h in ctx.help_option_names if h in own]
            if not helped or min(helped) > own.index("--version"):
                raise UsageError("--version takes nothing else: give farm --version alone", ctx)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=FarmGroup,
    name="farm",
    help="A Gearman-compatible compute farm for one multi-core host.",
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help, as click writes it: flags show no value metavar, and `farm server --help`
    # (rendered from gearmand-compatible argparse flags) can look the same.
    rich_markup_mode=None,
    # -h as well, as gearmand and most tools take it (the gearman and gearadmin tools use it
    # for the host; no farm command has a -h of its own). Every command inherits it.
    context_settings={"help_option_names": ["-h", "--help"]},
)


class FarmCommand(TyperCommand):
    """Every farm command's class: ``@app.command(cls=FarmCommand)``.

    click's parser raises "Option '--x' requires an argument." without the command's
    context, so that one mistake printed no usage line; the context is filled in here.
    """

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as e:
            if e.ctx is None:
                e.ctx, e.cmd = ctx, self
            raise


#: The longest ``--interval`` of the live views (farm top, farm ps --watch), in seconds:
#: "inf" reached time.sleep, whose OverflowError was a traceback.
MAX_INTERVAL = 3600.0
#: The longest ``--timeout`` of `farm check` and `farm reload`, in seconds (a day): one
#: bound, and one message, for both.
MAX_WAIT = 86400.0
CONFIG_HELP = "config file (default: $FARM_CONFIG, ./farm.toml, /etc/farm/farm.toml, built-in)"


def _config_path(text: str) -> Path:
    """``--config``'s value. typer made '' (``-c "$CONFIG"`` with the variable unset) the
    path '.', which the search then refused as ".: is a directory"."""
    if not text.strip():
        fail("--config must name a config file, not be empty", 2)
    return Path(text)


ConfigOption = typer.Option(
    None, "--config", "-c", help=CONFIG_HELP, parser=_config_path, metavar="<path>"
)
ControlOption = typer.Option(None, "--control", help="control socket (default: from the config)")
#: Where a client command goes given no --server (farm.discovery).
SERVER_DEFAULT_HELP = (
    "Default: the farm --config describes, when given; else $FARM_SERVERS, else"
    " $GEARMAN_SERVERS, else the farm the config describes (its Unix socket when this user"
    " may use it, else its TCP address)."
)


def _print_version(ctx: typer.Context, value: bool) -> None:
    # Not while the shell completes `farm --version st<TAB>`: "farm 0.1.0" was offered
    # among the completions, as click's own version option is careful not to.
    if value and not ctx.resilient_parsing:
        typer.echo(f"farm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print farm's version and exit.",
    ),
) -> None:
    """A Gearman-compatible compute farm for one multi-core host."""


def fail(
    message: str, code: int = 1, *, log_format: str = "text", usage: bool | None = None
) -> NoReturn:
    """One line on stderr and an exit code: 1 a failed job or command, 2 bad usage or config.
    ``log_format``: `farm up`'s, whose line is a JSON record among its others under json.
    ``usage``: end the line with where the command's flags are told, "(usage: farm CMD
    --help)", as click's own usage errors and `farm server`'s do; by default for exit 2,
    unless the line is that of a ConfigError being handled (a config file's, naming the
    file and the key: --help would not fix it, and `farm check` and `farm up` say the same)."""
    from farm.logs import error_line

    if usage is None:
        usage = code == 2 and not isinstance(sys.exc_info()[1], ConfigError)
    if usage and (ctx := get_current_context(silent=True)) is not None:
        message += f" (usage: farm {ctx.info_name} --help)" if ctx.parent else ""
    typer.echo(error_line(f"farm: {message}", log_format=log_format), err=True)
    raise typer.Exit(code)


def seconds(value: float | None, flag: str, at_most: float, at_least: float | None = None) -> None:
    """A number of seconds from a flag: finite, > 0 (from ``at_least`` where one is given)
    and at most ``at_most``, else exit 2. The comparisons refuse nan and inf too."""
    if value is None:
        return
    if at_least is None:
        if not 0 < value <= at_most:
            fail(
                f"{flag} must be a number of seconds > 0 and at most {at_most:.0f}, not {value}", 2
            )
    elif not at_least <= value <= at_most:
        fail(
            f"{flag} must be a number of seconds from {at_least:g} to {at_most:.0f}, not {value}", 2
        )


def typed(text: str) -> str:
    """A name or key quoted as the user typed it: one the locale could not decode (a byte
    that is not UTF-8, kept by Python as a surrogate) as its bytes: 'r\\xff', not 'r\\udcff'."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return repr(text.encode("utf-8", "surrogateescape"))[1:]
    return repr(text)


def own_row(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The farm's own process ("supervisor" or "server") among `farm ps`'s rows: the one
    with no slot, not a row of a pool that took that name."""
    return next((r for r in rows if r.get("function") == name and r.get("slot") is None), None)


def control_socket(config: Path | None, control: str | None) -> str:
    """``--control``, else the config's control socket (one line and exit 2 if unreadable)."""
    if control is not None:
        if not control.strip():  # else the socket's "Invalid argument", exit 1
            fail("--control must be the path of the control socket, not empty", 2)
        from farm.paths import socket_path_problem

        # Each of these was "no supervisor answers at ..." (or "AF_UNIX path too long"),
        # exit 1, as if the farm were down.
        if control.startswith("unix:"):
            fail(f"--control {control}: give the socket's path, without unix:", 2)
        if "/" not in control and re.fullmatch(r".*:\d+", control):
            fail(f"--control {control}: a TCP address; the control socket is a Unix socket", 2)
        if too_long := socket_path_problem(control, "/run/farm/control.sock"):
            fail(f"--control: {too_long}", 2)
        if there_and_no_socket(control):
            # else "no supervisor answers at PATH", exit 1, as if the farm were down
            fail(f"--control {control}: not a socket; give the farm's control socket", 2)
        return control
    # farm.discovery's address-only reading of the config: not farm.config, whose pools and
    # server options the steering commands never look at (a third of `farm ps`'s start).
    from farm.discovery import control_path

    try:
        path = control_path(config)
    except ConfigError as e:
        # A config broken while the farm runs must not lock its operator out of it.
        fail(f"{e} (to reach the running farm anyway: --control PATH)", 2)
    refused_config(config, path)  # where no farm is there: is it the file's fault?
    return path


def refused_config(config: Path | None, control: str | None = None) -> None:
    """Where no farm is (nothing at its control socket, ``control`` or the file's), a config
    file `farm up` would refuse (a pool's table, any key the address-only reading above
    passes over) is the news: its one line, exit 2. `farm ps -c F` with `workers = -1` in F
    said "no supervisor answers at ... (is farm up running with this config?)", exit 1,
    where `farm status` named the key. Only then, as a farm that runs may have been started
    from the file before it broke (and its control socket is all a steering command reads
    while it runs); and not of the pools' modules, which the farm finds on its own path,
    not this command's."""
    from farm.discovery import control_path, find_config

    try:
        if os.path.exists(control if control is not None else control_path(config)):
            return
    except ConfigError:
        return  # said by the caller's own reading of the file
    from farm.config import load

    try:
        load(find_config(config), locate_targets=False)
    except ConfigError as e:
        fail(f"{e} (farm up refuses this file, so no farm runs from it)", 2, usage=False)


def there_and_no_socket(path: str) -> bool:
    """Whether something other than a socket is at ``path`` (links followed, as the connect
    does); what is not there or cannot be looked at is left for the connect to say. One
    look (farm.sockettrust.not_a_socket): a socket removed between an exists() and a stat()
    (its server restarting) was a FileNotFoundError traceback."""
    from farm.sockettrust import not_a_socket  # the rule the Executor's discovery keeps too

    return not_a_socket(path) is True


def refuse_non_sockets(servers: list[str], source: str) -> None:
    """A ``unix:`` server that is there and no socket (a file, a directory) is a usage
    error: its connects were refused, exit 1, as if the farm were down (a worker's for ever).
    ``source``: where the servers were given (``--server``, ``$FARM_SERVERS``)."""
    for server in servers:
        path = server[5:] if server.startswith("unix:") else None
        if path and there_and_no_socket(path):
            fail(
                f"{source} {server}: not a socket; give the job server's Unix socket"
                " (e.g. unix:/run/farm/gearman.sock) or its HOST:PORT",
                2,
            )


def refuse_env_non_sockets(config: Path | None, servers: list[str]) -> None:
    """``refuse_non_sockets`` for the servers a client command found with no ``--server``,
    where ``$FARM_SERVERS`` or ``$GEARMAN_SERVERS`` named them (not a config's farm): a
    ``unix:`` path there that is no socket was "Connection refused (is the farm up?)", exit
    1, and a worker's connects retried for ever."""
    from farm.discovery import servers_from_env

    env = servers_from_env() if config is None else None
    if env is not None:
        refuse_non_sockets(servers, f"${env[0]}")


def metrics_url(text: str) -> str:
    """``--metrics`` as the URL to scrape; one no scrape can reach is a usage error (exit 2):
    `farm top` ran on with it, saying only that the endpoint "did not answer"."""
    from urllib.parse import urlsplit

    from farm.net import AddressError, dialable

    fix = "give HOST:PORT (e.g. 127.0.0.1:9730) or http://HOST:PORT/metrics"
    try:
        if "://" in text:
            parts = urlsplit(text)
            if parts.scheme in ("http", "https") and parts.hostname and parts.port != 0:
                return text
            fail(f"--metrics {text}: not an http:// URL with a host; {fix}", 2)
        where = dialable(text, default_port=None)  # with a host: http://:9730 is refused above too
    except (AddressError, ValueError) as exc:  # ValueError: urlsplit's port out of range
        fail(f"--metrics {text}: {getattr(exc, 'reason', exc)}; {fix}", 2)
    if where.kind == "unix":
        fail(f"--metrics {text}: metrics are served over HTTP, not a Unix socket; {fix}", 2)
    return f"http://{where}/metrics"


def named_config(config: Path | None) -> dict[str, str]:
    """The config file the user named (``--config``, else ``$FARM_CONFIG``), whole and its
    links resolved, as the fields a control request carries: ``config``, and ``named_by``
    ("-c" or "$FARM_CONFIG"), so that the refusal says which to change. The supervisor
    refuses the request when it runs another file (farm.pools.control.another_farm): two
    configs that differ only in their ports share the default control socket, and `farm
    stop -c d/farm.toml` stopped the farm started from c/farm.toml. {} when none was
    named: the search order's file (./farm.toml, /etc/farm/farm.toml) may well not be the
    running farm's, as before."""
    from farm.discovery import config_file

    if config is not None:
        return {"config": str(config_file(config)), "named_by": "-c"}
    env = os.environ.get("FARM_CONFIG") or None
    if env is None:
        return {}
    return {"config": str(config_file(Path(env))), "named_by": "$FARM_CONFIG"}


def ask_supervisor(
    config: Path | None, control: str | None, message: dict[str, Any]
) -> dict[str, Any]:
    """Send one control request (with the config the user named, for the supervisor to
    refuse if it runs another); every failure is one line and an exit code."""
    from farm.pools.control import ControlUnavailable, request

    path = control_socket(config, control)
    message = {**message, **named_config(config)}
    try:
        reply = request(path, message)
    except ControlUnavailable as e:
        fail(moved_control(config, path, str(e)) if control is None else str(e), 1)
    if not reply.get("ok"):
        # In the supervisor's words: a reload's config error among them, which --help
        # would not fix.
        error = str(reply.get("error", "the supervisor refused"))
        fail(error, 2 if reply.get("usage") else 1, usage=False)
    return reply


def moved_control(config: Path | None, path: str, said: str) -> str:
    """Why no supervisor answers at ``path``, the control socket the config names: when
    the farm started from that file answers elsewhere, the file's ``[supervisor] control``
    changed since (`systemctl reload` after editing it), and the line says how to reach it;
    else ``said``, the request's own reason (a runtime directory another user owns, say)."""
    from farm.discovery import find_config
    from farm.logs import escape_controls
    from farm.pools.control import answering_elsewhere

    try:
        found = find_config(config)
    except (ConfigError, OSError):
        return said
    running = answering_elsewhere(str(found), path) if found is not None else None
    if running is None:
        return said
    pid, old = running
    old = escape_controls(old)  # a path may hold anything; the terminal gets text
    return (
        f"no supervisor answers at {path}, the control socket {found} names; the farm started"
        f" from that file (pid {pid}) answers at {old} ([supervisor] control changed since, or"
        f" it is read from another runtime directory; a new path takes a restart). Reach it"
        f" with --control {old} (farm reload --control {old}); to move it, farm stop"
        f" --control {old}, then farm up"
    )


def _tolerant_stdout() -> None:
    """Standard output that writes what its encoding cannot hold as Python escapes it
    (\\u4e2d), not a traceback: under a locale that is not UTF-8 (ISO-8859-1, EUC-JP),
    Python's stdout is strict, and a name such as 中文 (or top's ▼) ended `farm status`,
    `ps`, `jobs` and `top` in a UnicodeEncodeError. (stderr escapes so already; the C
    locale's surrogateescape is not strict, nor changed.)"""
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and out.errors == "strict":
        out.reconfigure(errors="backslashreplace")


def main() -> None:
    """Console-script entry point."""
    _tolerant_stdout()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except WorkingDirectoryGone as e:
        # Whichever command read the working directory after it was removed (its config
        # check, `farm worker`'s module search): one line, as for any bad input.
        from farm.logs import error_line

        typer.echo(error_line(f"farm: {e}"), err=True)
        sys.exit(2)
