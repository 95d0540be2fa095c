"""Commands: `farm server` (the job server alone) and `farm status` (its queues)."""

from __future__ import annotations

import json

import typer

from farm import protocol
from farm.cli.app import app, fail
from farm.client.admin import admin_query
from farm.discovery import client_servers
from farm.net import DEFAULT_SERVER, AddressError, parse_address, parse_servers
from farm.protocol.admin import parse_poison, parse_status


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def server(ctx: typer.Context) -> None:
    """Run the job server alone (gearmand's flags: -p, -L, -j, -v, -l, -P; --unix, --store)."""
    from farm.server.app import main as server_main

    raise typer.Exit(server_main(ctx.args, prog="farm server"))


def default_server() -> str:
    """Where a client given no server goes (farm.discovery). Raises ValueError."""
    return parse_servers(client_servers())[0]


def server_address(server: str | None) -> str:
    """``--server`` (else the default) in normal form; a bad one is a usage error."""
    if server is None:
        try:
            return default_server()
        except ValueError as exc:
            fail(f"$GEARMAN_SERVERS: {exc}", 2)
    try:
        return str(parse_address(server))
    except AddressError as exc:
        fail(f"--server {server}: {exc.reason}", 2)


@app.command()
def status(
    server: str = typer.Option(
        None,
        "--server",
        "-s",
        help="HOST[:PORT], [IPv6]:PORT or unix:PATH "
        f"(default: $GEARMAN_SERVERS, else {DEFAULT_SERVER})",
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Functions with their queued, running and worker counts (like gearadmin --status)."""
    address = server_address(server)
    try:
        rows = parse_status(admin_query(address, "status"))
    except (OSError, ValueError, protocol.ProtocolError) as exc:
        fail(f"cannot read status from {address}: {exc}")
    poison = poison_jobs(address)
    if as_json:
        functions = [row._asdict() for row in rows]
        typer.echo(json.dumps({"functions": functions, "poison": poison}, indent=2))
        return
    width = max([len("FUNCTION")] + [len(r.function) for r in rows])
    typer.echo(f"{'FUNCTION':<{width}}  {'QUEUED':>8}  {'RUNNING':>8}  {'WORKERS':>8}")
    for r in sorted(rows):
        typer.echo(
            f"{r.function:<{width}}  {r.total - r.running:>8}  {r.running:>8}  {r.workers:>8}"
        )
    if poison:
        typer.echo(f"\npoison jobs (failed after job_retries worker deaths): {len(poison)}")
        for job in poison:
            typer.echo(f"  {job['handle']}  {job['function']}  unique={job['unique']!r}")


def poison_jobs(address: str) -> list[dict[str, str]]:
    """farm's `show poison jobs`; empty from servers that do not have it (gearmand)."""
    try:
        reply = admin_query(address, "show poison jobs")
    except OSError:
        return []
    if reply.startswith("ERR"):
        return []
    return [row._asdict() for row in parse_poison(reply)]
