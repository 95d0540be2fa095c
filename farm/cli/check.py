"""`farm check`: is this config good before `farm up` or `systemctl reload farm`?

It reads the config through farm.config, as `farm up` does, so a file `farm up` refuses is
refused here with the same line (exit 2) -- every bad pool at once, not only the first.
Then it asks farm up's own checks of what it would meet once started, in its order, each
line as farm up says it and farm up's exit code: its listen name
(farm.pools.localserver), where its control socket, store and Unix socket go
(farm.pools.places), asked without making or binding anything. Then each Python target
is loaded by a worker process of its own, as the pool's workers load it
(farm.pools.bootcheck): one that does not load is exit 1 (a warning for a pool of no
workers). A command pool is checked as the config checks it (its executable found and
executable by this user), not started: under another `user=` it is not asked whether that
user may enter its cwd or run it. It starts no farm and asks none: the running farm, its
ports and its sockets are left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from farm.cli.app import MAX_WAIT, ConfigOption, FarmCommand, app, fail, seconds
from farm.errors import ConfigError, FarmError

if TYPE_CHECKING:
    from farm.net import Address

__all__ = ["check"]


def _problem(line: str) -> None:
    from farm.logs import error_line, escape_controls

    # A target's error quotes its own code's text: escaped for the terminal.
    typer.echo(error_line(f"farm: {escape_controls(line)}"), err=True)


def _warn(line: str) -> None:
    from farm.logs import escape_controls

    typer.echo(f"farm: warning: {escape_controls(line)}", err=True)


def _taken_by_another_user(addresses: tuple[Address, ...]) -> str | None:
    """Why a TCP port of ``addresses`` another user listens on is in the way, read from the
    kernel's table, not bound: on a host where users each run a farm, the check said "ok"
    while another's held the port, and farm up stopped at once. A warning only: root
    checking the file of a farm run by its own user sees that farm there."""
    from farm.loopback import another_users_listener

    for addr in addresses:
        if addr.kind != "tcp":
            continue
        who = another_users_listener(addr.host, addr.port)
        if who is not None:
            return (
                f"{addr}: {who}: another user's process listens there, so farm up's server"
                " would not start (unless that is this file's farm, run by that user); give"
                " [server] listen another port"
            )
    return None


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
    when `farm up` would start them all, 2 on a config it refuses (its own line), 1 where
    farm up would say so with exit 1, or when a Python pool's target does not load.
    A reload applies [functions] only: [server], [supervisor] and [executor] take a restart."""
    import signal

    from farm.config import RESTART_TABLES_SAID, find_config, load
    from farm.config.capacity import quota_note
    from farm.logs import error_line
    from farm.paths import working_directory
    from farm.pools.bootcheck import (
        CannotStart,
        children_environ,
        php_default_dials,
        target_failures,
    )
    from farm.pools.fdbudget import descriptor_refusal
    from farm.pools.localserver import check_listen_name
    from farm.pools.places import UNIT_DIRECTORIES, place_errors, unit_made_places

    seconds(timeout, "--timeout", at_most=MAX_WAIT)
    # A SIGCHLD ignored by whatever started us is kept across exec, and the kernel then
    # reaps our children itself: the check could not see one end ("No child processes").
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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
    # What farm up refuses once the config reads, in its order: it stops at the first.
    refusals: list[FarmError] = []
    if cfg.local_server:
        try:
            check_listen_name(cfg.server, cfg.source)
        except ConfigError as e:
            refusals.append(e)
    refusals += place_errors(cfg, cfg.source)
    if (too_few := descriptor_refusal(cfg)) is not None:  # farm up asks it before these
        refusals.insert(0, too_few)
    for refusal in refusals:  # as farm up's own fail() says it
        typer.echo(error_line(f"farm: {refusal}"), err=True)
    for directory, keys in unit_made_places(cfg).items():
        _warn(
            f"{directory} does not exist and this user cannot make it ({', '.join(keys)});"
            f" the unit makes it ({UNIT_DIRECTORIES[directory]}) before farm up starts, so"
            " this was not checked: outside the unit, farm up would refuse it"
        )
    _, python_env, warnings = children_environ(cfg.executor)
    for warning in warnings:  # farm up logs them as warnings at its start
        _warn(warning)
    if cfg.local_server and (taken := _taken_by_another_user(cfg.server.addresses)):
        _warn(f"{cfg.source}: server.listen: {taken}")
    for warning in php_default_dials(cfg):  # farm up logs them at its start too
        _warn(warning)
    # The pools that read are loaded even when others did not: one run names them all.
    try:
        failed = target_failures(
            cfg, cfg.supervisor.boot_timeout if timeout is None else timeout, python_env
        )
    except CannotStart as e:  # no process could be started (EAGAIN: at the process limit)
        fail(f"cannot start a process to load the targets in: {e}", 1)
    broken = False
    for pool in cfg.functions.values():
        if pool.target not in failed:
            continue
        line = (
            f"{cfg.source}: functions.{pool.name}.target: {pool.target} does not load in a"
            f" worker: {failed[pool.target]}"
        )
        if pool.workers == 0:  # farm up starts none; `farm scale` would meet it
            _warn(f"{line}; its pool has no workers (workers = 0): fix it before it gets some")
        else:
            broken = True
            _problem(
                f"{line}; fix it, or the pool's workers fail at every start (retried with backoff)"
            )
    if pool_errors:
        fail(f"{len(pool_errors)} pool(s) refused: farm up would not start", 2, usage=False)
    if refusals:  # farm up's own line said it; its exit code is the first refusal's
        code = 2 if isinstance(refusals[0], ConfigError) else 1
        if broken:
            fail("farm up would not start: it stops at the first refusal above", code, usage=False)
        raise typer.Exit(code)
    if broken:
        fail("the config reads, but farm up would not start everything in it", 1)
    slots = sum(p.workers for p in cfg.functions.values())
    where = "the built-in defaults" if path is None else str(path.absolute())
    typer.echo(
        f"ok: {len(cfg.functions)} pool(s), {slots} slot(s), from {where}"
        f" (a reload applies [functions] only: {RESTART_TABLES_SAID} take a restart)"
    )
    if note := quota_note(cfg.supervisor.cpus):
        typer.echo(f"  {note}")
