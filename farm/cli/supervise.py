"""Commands: `farm up` (the supervisor) and `farm ps`, `scale`, `reload`, `stop` (steer it)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from farm.cli.app import (
    MAX_INTERVAL,
    MAX_WAIT,
    ConfigOption,
    Context,
    ControlOption,
    FarmCommand,
    UsageError,
    app,
    ask_supervisor,
    control_socket,
    fail,
    named_config,
    own_row,
    seconds,
    typed,
)
from farm.errors import ConfigError, FarmError

LogFormatOption = typer.Option(
    None,
    "--log-format",
    metavar="text|json",
    help="the supervisor's, server's and workers' logs (default: [supervisor] log_format)",
)


class UpCommand(FarmCommand):
    """`farm up`'s: a usage error under ``--log-format json`` is a JSON record as its log's
    lines are (click's own is a usage text of four lines, where `jq` stopped)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        asked = _asks_json(args)  # before the parser, which takes them off the list
        try:
            return super().parse_args(ctx, args)
        except UsageError as e:
            if not asked:
                raise
            from farm.logs import error_line

            said = f"farm up: {e.format_message()} (farm up --help)"
            typer.echo(error_line(said, log_format="json"), err=True)
            raise typer.Exit(e.exit_code) from None


def _asks_json(args: list[str]) -> bool:
    """Whether `farm up`'s arguments ask for JSON logs (``--log-format json``, or ``=json``)."""
    return "--log-format=json" in args or any(
        a == "--log-format" and b == "json" for a, b in zip(args, args[1:], strict=False)
    )


@app.command(cls=UpCommand)
def up(
    config: Path | None = ConfigOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every worker event"),
    log_format: str | None = LogFormatOption,
) -> None:
    """Run the supervisor in the foreground: job server + pinned workers (what systemd runs)."""
    from dataclasses import replace

    from farm.config import find_config, load
    from farm.logs import LOG_FORMATS, setup_logging
    from farm.paths import working_directory
    from farm.supervisor import Supervisor

    path = None
    try:
        # Typed in a directory since removed: its workers/ would not be found, so say so now
        # (a running farm's reload reads it as one not searched: a daemon cannot cd).
        working_directory()
        path = find_config(config)
        cfg = load(path)
    except ConfigError as e:
        # As its log would have been: a plain line among JSON records stopped `jq` there.
        fail(str(e), 2, log_format=log_format or _file_log_format(path))
    if log_format is not None:
        if log_format not in LOG_FORMATS:
            fail(f"--log-format {log_format}: text or json", 2)
        cfg = replace(cfg, supervisor=replace(cfg.supervisor, log_format=log_format))
    setup_logging(
        role="supervisor",
        log_format=cfg.supervisor.log_format,
        level=logging.DEBUG if verbose else logging.INFO,
        text_format="%(asctime)s farm[%(process)d] %(levelname)s %(message)s",
        # In the journal, journald's own of each line say its time, name and pid; the
        # server's and workers' lines (on this stderr too, so under this pid) keep theirs.
        journal_format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from farm.pools.fdbudget import descriptor_refusal

    if (too_few := descriptor_refusal(cfg)) is not None:  # before anything starts: exit 2
        fail(str(too_few), 2, log_format=cfg.supervisor.log_format, usage=False)
    supervisor: Supervisor | None = None
    try:
        # Absolute, so that what a reload says names the file wherever `farm reload` runs.
        supervisor = Supervisor(cfg, str(path.absolute()) if path else None, log_format)
        try:
            code = supervisor.run()
        finally:
            supervisor.close_wakeups()
    except ConfigError as e:  # a control socket its path cannot hold
        fail(str(e), 2, log_format=cfg.supervisor.log_format)
    except FarmError as e:
        fail(str(e), 1, log_format=cfg.supervisor.log_format)
    except OSError as e:  # once it ran, "cannot start" sent a reader after the wrong cause
        ran = supervisor is not None and supervisor.ready_sent
        said = "stopped on an error" if ran else "cannot start"
        fail(f"{said}: {e}", 1, log_format=cfg.supervisor.log_format)
    raise typer.Exit(code)


def _file_log_format(path: Path | None) -> str:
    """The ``[supervisor] log_format`` of a file that does not load as a config (a bad
    pool), where its TOML reads: the log format its refusal is said in."""
    from farm.configfile import read_config_file

    if path is None:
        return "text"
    try:
        table = read_config_file(path).get("supervisor")
    except ConfigError:  # not TOML, unreadable: nothing in it can be read
        return "text"
    said = table.get("log_format") if isinstance(table, dict) else None
    return "json" if said == "json" else "text"


@app.command(cls=FarmCommand)
def ps(
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    watch: bool = typer.Option(False, "--watch", "-w", help="redraw the table in place"),
    interval: float = typer.Option(
        1.0, "--interval", min=0.1, max=MAX_INTERVAL, help="seconds between redraws"
    ),
    count: int | None = typer.Option(None, "--count", min=1, help="with --watch: stop after N"),
) -> None:
    """Every process of the farm: pid, function, slot, cpu, state, jobs done, RSS, restarts,
    and for a busy worker its job handle and how long it has run."""
    from farm.cli.watch import ps_lines, terminal_width

    if watch and as_json:
        fail("--watch draws the table; use --json without it", 2)
    if count is not None and not watch:
        fail("--count says how many times --watch redraws; give --watch too", 2)
    reply = ask_supervisor(config, control, {"cmd": "ps"})
    rows = reply["processes"]
    if as_json:
        own = own_row(rows, "supervisor")  # not a pool's rows, were one named so
        if own is not None:  # where /metrics listens (the real port when configured as 0)
            own["metrics"] = reply.get("metrics")
            own["metrics_error"] = reply.get("metrics_error")  # why it is null, if asked for
        typer.echo(json.dumps(rows, indent=2))
        return
    if watch:  # farm top's live view (farm/cli/top.py), its process table only
        from farm.cli.top import live_view

        raise typer.Exit(
            live_view(
                control_socket(config, control),
                interval=interval,
                iterations=count,
                processes_only=True,
                config=named_config(config),
            )
        )
    for line in ps_lines(rows, terminal_width()):
        typer.echo(line)


@app.command(cls=FarmCommand)
def scale(
    changes: Annotated[
        list[str], typer.Argument(help="NAME=COUNT, NAME=+N, NAME=-N or NAME=auto (one per core)")
    ],
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
) -> None:
    """Change worker counts at runtime (draining on the way down).

    For example: `farm scale resize=32 reverse=+2 thumbnail=-1`.
    """
    from farm.pools.control import parse_scale

    named: set[str] = set()
    for change in changes:
        try:
            name = parse_scale(change)[0]
        except ValueError as e:  # a byte not UTF-8 shown as typed ('\\xff'), as elsewhere
            fail(str(e).replace(repr(change), typed(change), 1), 2)
        if name in named:  # the supervisor would apply the last one, silently
            fail(f"{typed(name)} is named twice; give one change per pool", 2)
        named.add(name)
    reply = ask_supervisor(config, control, {"cmd": "scale", "changes": changes})
    typer.echo(" ".join(f"{name}={count}" for name, count in reply["targets"].items()))


@app.command(cls=FarmCommand)
def reload(
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
    restart: bool = typer.Option(
        False, "--restart", help="then replace every worker, as `farm restart` does"
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        help="seconds to wait for added pools to serve, or a restart to end, before exit 1"
        " (default: boot_timeout + 2 for added pools); keep it under systemd's TimeoutStartSec",
    ),
) -> None:
    """Re-read the config: apply changed counts, restart pools whose target or options changed
    (each new process beside the old one, which stays if the new one does not boot: exit 1)."""
    import time

    began = time.monotonic()
    seconds(timeout, "--timeout", at_most=MAX_WAIT)

    if control is None:
        control = unread_config_s_farm(config)
    # The farm re-reads its own file: it refuses a named one that is not it (ask_supervisor).
    reply = ask_supervisor(config, control, {"cmd": "reload", "restart": restart})
    for note in reply.get("not_applied", ()):  # the pools changed; these wait for a restart
        typer.echo(f"not applied: {note}", err=True)
    # "reloaded" is said once it is so: it was said first, then a restart that did not
    # boot or an added pool that did not serve failed the reload, exit 1, under it.
    if "restart" in reply:  # --restart, or pools whose target or options changed
        from farm.cli.deploy import follow_restart  # registers nothing new: cli imports it

        follow_restart(
            reply,
            lambda: ask_supervisor(config, control, {"cmd": "restart-status"}),
            None if timeout is None else began + timeout,
            what="reload",
        )
    if reply.get("added"):  # new pools: their first processes serve, or the reload says why not
        from farm.cli.deploy import follow_added

        # Past boot_timeout the supervisor has killed a Python one still loading. systemd
        # bounds `systemctl reload` by TimeoutStartSec: the unit passes a --timeout under it,
        # so that the reload says what still starts before systemd kills it.
        wait = float(reply.get("boot_timeout", 60)) + 2 if timeout is None else timeout
        follow_added(
            reply["added"], lambda: ask_supervisor(config, control, {"cmd": "ps"}), began, wait
        )
    if reply.get("unchanged"):  # nothing restarts: code edited on disk is not read again
        typer.echo(
            "reloaded: no pool changed (edited worker code runs after"
            " `farm reload --restart` or `farm restart`)"
        )
    else:
        typer.echo("reloaded")


def unread_config_s_farm(config: Path | None) -> str | None:
    """The control socket of this user's running farm that re-reads the config file, when
    that file cannot be read for it (bad TOML, emptied, removed); None when it can (the
    socket it names is asked) or no such farm runs (the file's own error, exit 2).

    A reload of a file that does not parse is the farm's to refuse: it logs "reload
    failed" and farm_config_last_reload_successful goes to 0, so the alert on it fires
    before the next start refuses the file. Stopping here, exit 2, the farm heard nothing.
    Not the default socket path: that may be another farm's (one started from no file, or
    from another); only a supervisor of this user's that says it re-reads this very file
    is asked, and a reload there reads nothing but that file."""
    import os

    from farm.discovery import config_file, control_path, find_config
    from farm.pools.control import answering_elsewhere

    try:
        control_path(config)
        return None
    except ConfigError:
        pass
    try:
        found = find_config(config)
    except ConfigError:  # named and not there (removed): the farm started from it re-reads it
        named = config if config is not None else os.environ.get("FARM_CONFIG")
        found = Path(named) if named else None
    if found is None:
        return None
    running = answering_elsewhere(str(config_file(found)), "")
    return running[1] if running is not None else None


@app.command(cls=FarmCommand)
def stop(
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
    wait: float = typer.Option(60.0, "--wait", help="seconds to wait for the exit (0: don't)"),
) -> None:
    """Drain the workers and stop the farm (like SIGTERM to `farm up`), showing the drain."""
    from farm.cli.watch import follow_stop

    if not 0 <= wait <= 86400:  # also refuses nan and inf
        fail(f"--wait must be a number of seconds from 0 to 86400, not {wait}", 2)
    if not wait:
        reply = ask_supervisor(config, control, {"cmd": "stop"})
        typer.echo(f"stopping (supervisor {reply.get('pid')})")
        return
    follow_stop(control_socket(config, control), wait, named_config(config))
