"""Commands: `farm server` (the job server alone), `farm status` (its queues), `farm jobs`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from farm.cli.app import (
    SERVER_DEFAULT_HELP,
    ConfigOption,
    FarmCommand,
    app,
    fail,
    named_config,
    own_row,
    refuse_env_non_sockets,
    refuse_non_sockets,
    refused_config,
)
from farm.cli.rows import cells, ljust
from farm.errors import ConfigError, FarmError

# The client side (farm.net, farm.discovery, farm.client.admin, farm.protocol) is imported
# where it is used: every `farm` command loads this module to register these commands, and
# those imports (sockets, ssl, the packet table) were a fifth of each command's start.
if TYPE_CHECKING:
    import ssl

#: The most `farm jobs` reads of the `jobs` listing by default (--max-reply; admin_query's
#: max_reply). A job's line (its function's name, a handle of at most 63 bytes, about 30
#: more) is under 0.6 of what the job holds against --max-queued-bytes (its name, unique and
#: payload, and 512 bytes): under 640 MB at the default 1 GiB, past admin_query's own
#: 256 MiB, which `status` and `workers` stay well under. A server with a larger
#: --max-queued-bytes (past about 1.7 GiB, or 0: no limit) can list more: --max-reply.
JOBS_MAX_REPLY = 1 << 30
#: The most of what a job holds against --max-queued-bytes that its line in `jobs` takes.
LINE_SHARE = 0.6


@app.command(
    cls=FarmCommand,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def server(ctx: typer.Context) -> None:
    """Run the job server alone (gearmand's flags: -p, -L, -j, -v, -l, -P; --unix, --store)."""
    from farm.server.app import main as server_main

    flags = ctx.args[: ctx.args.index("--")] if "--" in ctx.args else ctx.args
    if "--help" in flags or "-h" in flags:
        typer.echo(server_help(ctx))
        raise typer.Exit(0)
    raise typer.Exit(server_main(ctx.args, prog="farm server"))


def server_help(ctx: typer.Context) -> str:
    """``farm server --help`` laid out as the other commands' help, from the one parser of
    the server's flags (farm.server.options), so gearmand's flags stay as they are."""
    import argparse

    from farm.server.options import build_parser

    parser = build_parser("farm server")
    rows = []
    for action in parser._actions:  # argparse has no public list of its actions
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(action.option_strings)
        if action.nargs != 0:  # flags (store_true, count) take no value: no metavar
            metavar = action.metavar or (
                "|".join(action.choices) if action.choices else action.dest.upper()
            )
            names += f" <{metavar}>"
        text = (action.help or "") % {"default": action.default}
        rows.append((names, text))
    rows.append(("-h, --help", "Show this message and exit."))
    formatter = ctx.make_formatter()
    formatter.write_usage(ctx.command_path, "[OPTIONS]")
    formatter.write_paragraph()
    with formatter.indentation():
        formatter.write_text(
            "Run the job server alone. It takes gearmand's common flags (-p, -L, -j, -v, -l,"
            " -P; -t, -q, -f and -u are accepted and ignored), so farm stands in wherever"
            " gearmand is started."
        )
    with formatter.section("Options"):
        formatter.write_dl(rows)
    return formatter.getvalue().rstrip("\n")


def default_server(config: Path | None = None) -> str:
    """Where a client given no server goes (farm.discovery). Raises ValueError, or
    ConfigError for a config that does not say."""
    from farm.discovery import client_servers
    from farm.net import parse_servers

    return parse_servers(client_servers(config))[0]


def server_address(server: str | None, config: Path | None = None) -> str:
    """``--server`` (else the default, from ``config`` if given) in normal form; a bad one
    is a usage error."""
    from farm.net import AddressError, dialable

    if server is None:
        try:
            found = default_server(config)
        except ConfigError as exc:
            fail(str(exc), 2)
        except FarmError as exc:
            fail(str(exc), 1)
        except ValueError as exc:
            from farm.discovery import servers_from_env

            env = servers_from_env() if config is None else None
            source = f"${env[0]}" if env else "the default server"
            fail(f"{source}: {exc}", 2)
        refuse_env_non_sockets(config, [found])
        return found
    try:
        given = str(dialable(server))
    except AddressError as exc:
        fail(f"--server {server}: {exc.reason}", 2)
    refuse_non_sockets([given], "--server")
    return given


def listed_by(limit: int) -> str:
    """The --max-queued-bytes past which a server's `jobs` listing may run past ``limit``
    bytes (``LINE_SHARE``), in words: "1.7 GiB" at the default --max-reply, not whatever
    --max-reply was given."""
    held = math.ceil(limit / LINE_SHARE)
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if held >= 1 << shift:
            return f"{held / (1 << shift):.1f} {unit}"
    return f"{held} bytes"


def unreachable(
    what: str, address: str, exc: Exception, server: str | None, config: Path | None
) -> NoReturn:
    """Why an admin command got no answer, one line; where nothing listens, what to check
    (as `farm ps` asks whether `farm up` runs), or, when the farm's own server was asked
    (no ``--server``) and its supervisor answers, that the farm runs and its server is down."""
    from farm.discovery import servers_from_env

    hint = ""
    if isinstance(exc, ConnectionRefusedError | FileNotFoundError):
        hint = " (no job server listens there: is the farm up? --server or --config names another)"
        if server is None and (config is not None or servers_from_env() is None):
            # The farm's own server was asked (not $FARM_SERVERS'): with no farm there, a
            # file farm up would refuse is said as such (exit 2), else its supervisor may
            # say why.
            refused_config(config)
            hint = farm_server_down(config) or hint
    fail(f"cannot read {what} from {address}: {exc}{hint}")


def farm_server_down(config: Path | None) -> str:
    """Where the farm's supervisor answers and its job server is not ready (restarting with
    backoff, its store or port refused): that, for the line above; else "". "Is the farm
    up?" misled an operator whose farm was up, its log saying why the server was not."""
    from farm.discovery import control_path
    from farm.pools.control import request

    try:
        # With the config named: another farm at its control socket is not the one asked.
        message = {"cmd": "ps", **named_config(config)}
        reply = request(control_path(config), message, timeout=2.0)
        rows = reply["processes"]
        sup, srv = own_row(rows, "supervisor"), own_row(rows, "server")
    except Exception:  # no farm, or not this one's: the plain hint stands
        return ""
    pid = None if sup is None else sup["pid"]
    if srv is None or srv.get("state") == "ready":
        return ""
    why = server_why(srv)
    return f" (the farm runs (supervisor pid {pid}), but its job server is not up: {why})"


def server_why(srv: dict[str, Any]) -> str:
    """Why the farm's job server (its `farm ps` row) does not answer, for the line above."""
    restarts = int(srv.get("restarts", 0))
    if srv.get("state") == "starting" and not restarts:
        # Its first start: the warning log, where the line below sent the operator, has
        # nothing on it. A store is replayed before the server listens (40 s for a large
        # one); with store = "none" (or a replay done) there is none to name.
        return "starting (replaying its store; farm ps)" if srv.get("replaying") else "starting"
    last = f"; the last {srv['last_exit']}" if srv.get("last_exit") else ""
    return (
        f"{srv.get('state')}, restarted {restarts} time{'' if restarts == 1 else 's'}{last};"
        " the log says why, e.g. journalctl -u farm -p warning"
    )


#: The one server an admin command asks (``farm status``, ``farm jobs``).
ServerOption = typer.Option(
    None,
    "--server",
    "-s",
    metavar="ADDRESS",
    help=f"HOST[:PORT], [IPv6]:PORT or unix:PATH. {SERVER_DEFAULT_HELP}",
)


@app.command(cls=FarmCommand)
def status(
    server: str = ServerOption,
    config: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Functions with their queued, running and worker counts (like gearadmin --status)."""
    from farm.client.admin import ReplyTooLarge, admin_query, reply_size
    from farm.logs import escape_controls
    from farm.protocol import ProtocolError
    from farm.protocol.admin import parse_status

    address = server_address(server, config)
    tls = admin_tls()
    try:
        rows = parse_status(admin_query(address, "status", tls=tls))
    except ReplyTooLarge as exc:
        fail(
            f"cannot read status from {address}: the job server's answer ran past"
            f" {reply_size(exc.limit)}, the most `farm status` reads (more than a farm server"
            " lists with its default limits); gave up and closed the connection"
        )
    except (OSError, ValueError, ProtocolError) as exc:
        unreachable("status", address, exc, server, config)
    poison = poison_jobs(address, tls)
    if as_json:  # the table's names: queued (not total), running, workers
        functions = [
            {
                "function": r.function,
                "queued": r.total - r.running,
                "running": r.running,
                "workers": r.workers,
            }
            for r in sorted(rows)
        ]
        typer.echo(json.dumps({"functions": functions, "poison": poison}, indent=2))
        return
    # gearmand lists a name as a client sent it: an ESC, a carriage return or a tab in it
    # reached the terminal raw (recoloured it, overwrote the row), as farm's server, which
    # refuses them, never lists one. Written \xNN, \r, \t here, as the log writes them.
    names = {r.function: escape_controls(r.function).replace("\t", "\\t") for r in rows}
    width = max([len("FUNCTION")] + [cells(shown) for shown in names.values()])
    typer.echo(f"{'FUNCTION':<{width}}  {'QUEUED':>8}  {'RUNNING':>8}  {'WORKERS':>8}")
    for r in sorted(rows):
        shown = ljust(names[r.function], width)  # by terminal columns: 中文 takes four
        typer.echo(f"{shown}  {r.total - r.running:>8}  {r.running:>8}  {r.workers:>8}")
    if poison:
        typer.echo(f"\npoison jobs (failed after job_retries worker deaths): {len(poison)}")
        for job in poison:
            typer.echo(f"  {job['handle']}  {job['function']}  unique={job['unique']!r}")


@app.command(cls=FarmCommand)
def jobs(
    server: str = ServerOption,
    config: Path | None = ConfigOption,
    function: str = typer.Option(None, "--function", "-f", help="only this function's jobs"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    max_reply: int = typer.Option(
        JOBS_MAX_REPLY,
        "--max-reply",
        metavar="BYTES",
        min=1,
        help="the most bytes of the server's listing read (default 1 GiB: a listing at the"
        " server's default --max-queued-bytes; a server run with a larger --max-queued-bytes,"
        " or --max-queued-bytes 0 (no limit), may list more)",
    ),
) -> None:
    """The jobs running and queued, per function, oldest first: priority, how long each
    has waited for a worker or run on one."""
    from farm.client.admin import ReplyTooLarge, admin_query, reply_size
    from farm.protocol import ProtocolError
    from farm.protocol.admin import parse_jobs

    if function == "":  # no function has that name: an empty listing said nothing of it
        fail("--function must name a function, not be empty", 2)
    address = server_address(server, config)
    try:
        # surrogateescape: --function compares by bytes, as a name not in UTF-8 was typed
        reply = admin_query(
            address,
            "jobs",
            tls=admin_tls(),
            errors="surrogateescape",
            max_reply=max_reply,
        )
        if reply.startswith("ERR"):
            fail(
                f"the server at {address} does not support `farm jobs` (gearmand has no such"
                " admin command; `farm status` works with both)"
            )
        rows = parse_jobs(reply)
    except ReplyTooLarge as exc:
        # --function filters what was read: the server lists every job all the same.
        fail(
            f"cannot read the jobs from {address}: the listing ran past"
            f" {reply_size(exc.limit)}, the most `farm jobs` reads (--max-reply BYTES); a"
            f" server with a --max-queued-bytes over about {listed_by(exc.limit)}, or 0 (no"
            f" limit), lists more: raise it, e.g. --max-reply {exc.limit * 4}"
        )
    except (OSError, ValueError, ProtocolError) as exc:
        unreachable("the jobs", address, exc, server, config)
    if function is not None:
        wanted = function.encode("utf-8", "surrogateescape")  # the bytes typed
        rows = [r for r in rows if r.function.encode("utf-8", "surrogateescape") == wanted]
    # Shown as before: a byte that is not UTF-8 as U+FFFD (as `farm status` lists it).
    rows = [
        r._replace(
            function=r.function.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        )
        for r in rows
    ]
    if as_json:
        typer.echo(json.dumps([r._asdict() for r in rows], indent=2))
        return
    # The server's age is since it was queued, or since a worker took it: under one AGE
    # header it read as each job's age, and a job queued for an hour showed 0.2s once a
    # worker took it. Each in its own column, as ps's ELAPSED and TIME are two; a scheduled
    # job waits for its epoch time, not for a worker: neither.
    table = [("FUNCTION", "HANDLE", "STATE", "PRIORITY", "WAITING", "RUNNING")] + [
        (r.function, r.handle, r.state, r.priority, *_waiting_running(r.state, r.age)) for r in rows
    ]
    widths = [max(cells(row[i]) for row in table) for i in range(6)]
    for row in table:
        typer.echo("  ".join(ljust(c, w) for c, w in zip(row, widths, strict=True)).rstrip())


def _waiting_running(state: str, age: float) -> tuple[str, str]:
    """`farm jobs`' WAITING and RUNNING cells of a job in ``state``, ``age`` seconds in it."""
    if state == "queued":
        return f"{age:.1f}s", "-"
    if state == "running":
        return "-", f"{age:.1f}s"
    return "-", "-"


def admin_tls() -> ssl.SSLContext | None:
    """$FARM_TLS_CA, $FARM_TLS_CERT, $FARM_TLS_KEY, as `farm submit` and `farm worker` take
    them (a file that cannot be used: one line, exit 2)."""
    from farm.tlsfiles import tls_from_env

    try:
        return tls_from_env()
    except FarmError as exc:  # a file $FARM_TLS_* names: no flag of the command's
        fail(str(exc), 2, usage=False)


def poison_jobs(address: str, tls: ssl.SSLContext | None = None) -> list[dict[str, str]]:
    """farm's `show poison jobs`; empty from servers that do not have it (gearmand)."""
    from farm.client.admin import admin_query
    from farm.protocol.admin import parse_poison

    try:
        reply = admin_query(address, "show poison jobs", tls=tls)
    except OSError:
        return []
    if reply.startswith("ERR"):
        return []
    return [row._asdict() for row in parse_poison(reply)]
