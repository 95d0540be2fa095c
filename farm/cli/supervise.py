"""Commands: `farm up` (the supervisor) and `farm ps`, `scale`, `reload`, `stop` (steer it)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from farm.cli.app import app, fail
from farm.errors import ConfigError, FarmError

CONFIG_HELP = "config file (default: $FARM_CONFIG, ./farm.toml, /etc/farm/farm.toml, built-in)"
ConfigOption = typer.Option(None, "--config", "-c", help=CONFIG_HELP)
ControlOption = typer.Option(None, "--control", help="control socket (default: from the config)")


@app.command()
def up(
    config: Path | None = ConfigOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every worker event"),
) -> None:
    """Run the supervisor in the foreground: job server + pinned workers (what systemd runs)."""
    from farm.config import find_config, load
    from farm.supervisor import Supervisor

    try:
        path = find_config(config)
        cfg = load(path)
    except ConfigError as e:
        fail(str(e), 2)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s farm[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        code = Supervisor(cfg, str(path) if path else None).run()
    except FarmError as e:
        fail(str(e), 1)
    except OSError as e:
        fail(f"cannot start: {e}", 1)
    raise typer.Exit(code)


def _ask(config: Path | None, control: str | None, message: dict[str, Any]) -> dict[str, Any]:
    """Send one control request; every failure is one line and an exit code."""
    from farm.pools.control import ControlUnavailable, request

    if control is None:
        from farm.config import control_path

        try:
            control = control_path(config)
        except ConfigError as e:
            fail(str(e), 2)
    try:
        reply = request(control, message)
    except ControlUnavailable as e:
        fail(str(e), 1)
    if not reply.get("ok"):
        fail(str(reply.get("error", "the supervisor refused")), 2 if reply.get("usage") else 1)
    return reply


@app.command()
def ps(
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Every process of the farm: pid, function, slot, cpu, state, jobs done, RSS, restarts."""
    rows = _ask(config, control, {"cmd": "ps"})["processes"]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("PID", "FUNCTION", "SLOT", "CPU", "STATE", "JOBS", "RSS", "RESTARTS", "UPTIME")
    table = [header] + [
        (
            _cell(r["pid"]),
            r["function"],
            _cell(r["slot"]),
            _cell(r["cpu"]),
            r["state"],
            str(r["jobs"]),
            f"{r['rss'] / 2**20:.1f}M" if r["rss"] else "-",
            str(r["restarts"]),
            _duration(r["uptime"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@app.command()
def scale(
    changes: Annotated[list[str], typer.Argument(help="NAME=COUNT, NAME=+N or NAME=-N")],
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
) -> None:
    """Change worker counts at runtime, e.g. `farm scale resize=32 reverse=+2 thumb=-1`."""
    from farm.pools.control import parse_scale

    for change in changes:
        try:
            parse_scale(change)
        except ValueError as e:
            fail(str(e), 2)
    reply = _ask(config, control, {"cmd": "scale", "changes": changes})
    typer.echo(" ".join(f"{name}={count}" for name, count in reply["targets"].items()))


@app.command()
def reload(config: Path | None = ConfigOption, control: str | None = ControlOption) -> None:
    """Re-read the config: apply changed counts, restart pools whose target or options changed."""
    _ask(config, control, {"cmd": "reload"})
    typer.echo("reloaded")


@app.command()
def stop(
    config: Path | None = ConfigOption,
    control: str | None = ControlOption,
    wait: float = typer.Option(60.0, "--wait", help="seconds to wait for the exit (0: don't)"),
) -> None:
    """Drain the workers and stop the farm (like SIGTERM to `farm up`)."""
    from farm.pools.control import ControlUnavailable, request

    reply = _ask(config, control, {"cmd": "stop"})
    path = control
    if path is None:
        from farm.config import control_path

        path = control_path(config)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            request(path, {"cmd": "ping"}, timeout=1.0)
        except ControlUnavailable:
            typer.echo(f"stopped (supervisor {reply.get('pid')})")
            return
        time.sleep(0.1)  # polling another process's exit
    if wait:
        fail(f"supervisor {reply.get('pid')} is still draining after {wait:g}s", 1)
    typer.echo(f"stopping (supervisor {reply.get('pid')})")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
