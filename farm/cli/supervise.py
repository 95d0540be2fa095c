"""Commands: placeholder until its issue lands."""

from farm.cli.app import app  # noqa: F401
