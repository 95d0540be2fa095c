"""Commands: `farm server` (the job server alone) and `farm status` (its queues)."""

from __future__ import annotations

import json
import os

import typer

from farm import protocol
from farm.cli.app import app, fail
from farm.client.admin import admin_query
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
    servers = os.environ.get("GEARMAN_SERVERS", "").split(",")
    return servers[0].strip() or "127.0.0.1:4730"


@app.command()
def status(
    server: str = typer.Option(None, "--server", "-s", help="HOST:PORT or unix:PATH"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Functions with their queued, running and worker counts (like gearadmin --status)."""
    address = server or default_server()
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
