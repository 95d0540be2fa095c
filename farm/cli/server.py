"""Commands: `farm server` (the job server alone) and `farm status` (its queues)."""

from __future__ import annotations

import json
import os
import socket

import typer

from farm import protocol
from farm.cli.app import app, fail


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def server(ctx: typer.Context) -> None:
    """Run the job server alone (gearmand's flags: -p, -L, -j, -v, -l, -P; --unix, --store)."""
    from farm.server.app import main as server_main

    raise typer.Exit(server_main(ctx.args, prog="farm server"))


def admin_query(address: str, command: str, timeout: float = 5.0) -> str:
    """Send one admin command to a job server and return its whole reply."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[5:])
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "4730")
        sock = socket.create_connection((host, int(port or 4730)), timeout=timeout)
    with sock:
        sock.sendall(command.encode() + b"\n")
        buf = b""
        while not (
            buf == b".\n"
            or buf.endswith(b"\n.\n")
            or buf.startswith((b"OK", b"ERR"))
            and buf.endswith(b"\n")
        ):
            data = sock.recv(65536)
            if not data:
                break
            buf += data
    return buf.decode("utf-8", "replace")


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
        rows = protocol.parse_status(admin_query(address, "status"))
    except (OSError, protocol.ProtocolError) as exc:
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
    jobs = []
    for line in reply.splitlines():
        if line == ".":
            break
        handle, function, unique = (line.split("\t") + ["", ""])[:3]
        jobs.append({"handle": handle, "function": function, "unique": unique})
    return jobs
