"""`farm check`: is this config good before `farm up` or `systemctl reload farm`?

It reads the config through farm.config, as `farm up` does, so a file `farm up` refuses is
refused here with the same line (exit 2) -- every bad pool at once, not only the first.
Then it asks what `farm up` would meet once started (farm.pools.bootcheck): each Python
target loaded by a worker process of its own, as the pool's workers load it, and the
directories of the store and the sockets writable by this user; a pool that cannot start,
or a file that cannot be made, is exit 1. It starts no farm and asks none: the running
farm, its ports and its sockets are left alone.
"""

from __future__ import annotations

from pathlib import Path

import typer

from farm.cli.app import ConfigOption, FarmCommand, app, fail
from farm.errors import ConfigError

__all__ = ["check"]


def _problem(line: str) -> None:
    from farm.logs import error_line, escape_controls

    # A target's error quotes its own code's text: escaped for the terminal.
    typer.echo(error_line(f"farm: {escape_controls(line)}"), err=True)


@app.command(cls=FarmCommand)
def check(
    config: Path | None = ConfigOption,
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        help="seconds a target may take to load (default: [supervisor] boot_timeout)",
    ),
) -> None:
    """Check the config and that every pool can start, touching no running farm: exit 0
    when `farm up` would start them all, 2 on a config it refuses, 1 when a pool could not
    start (a target that does not load) or a file of the farm's could not be made."""
    from farm.config import find_config, load
    from farm.paths import working_directory
    from farm.pools.bootcheck import place_problems, target_failures

    if timeout is not None and not 0 < timeout <= 86400:  # also refuses nan and inf
        fail(f"--timeout must be a number of seconds above 0 and at most 86400, not {timeout}", 2)
    pool_errors: list[ConfigError] = []
    try:
        working_directory()  # as farm up: its workers/ would not be found
        path = find_config(config)
        cfg = load(path, pool_errors)
    except ConfigError as e:
        for error in pool_errors:
            _problem(str(error))
        fail(str(e), 2)
    for error in pool_errors:
        _problem(str(error))
    # The pools that read are loaded even when others did not: one run names them all.
    try:
        failed = target_failures(cfg, cfg.supervisor.boot_timeout if timeout is None else timeout)
    except OSError as e:  # no process could be started (EAGAIN: at the process limit)
        fail(f"cannot start a process to load the targets in: {e}", 1)
    for pool in cfg.functions.values():
        if pool.target in failed:
            _problem(
                f"{cfg.source}: functions.{pool.name}.target: {pool.target} does not load in a"
                f" worker: {failed[pool.target]}; fix it, or the pool's workers fail at every"
                " start (retried with backoff)"
            )
    places = place_problems(cfg)
    for key, why in places:
        _problem(f"{cfg.source}: {key}: {why}")
    if pool_errors:
        fail(f"{len(pool_errors)} pool(s) refused: farm up would not start", 2)
    if failed or places:
        fail("the config reads, but farm up would not start everything in it", 1)
    slots = sum(p.workers for p in cfg.functions.values())
    where = "the built-in defaults" if path is None else str(path.absolute())
    typer.echo(f"ok: {len(cfg.functions)} pool(s), {slots} slot(s), from {where}")
