"""The typer application every command module registers on."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

app = typer.Typer(
    name="farm",
    help="A Gearman-compatible compute farm for one multi-core host.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and an exit code: 1 a failed job or command, 2 bad usage or config."""
    typer.echo(f"farm: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
