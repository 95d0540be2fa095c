"""The one way a farm.toml value is checked and refused: by its dotted key, in one line.

:class:`TableReader` holds what every table needs (unknown keys with a "did you mean",
counts, limits, addresses, paths relative to the file); :mod:`farm.config.parse` builds
farm.toml's tables on it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from farm.discovery import resolve
from farm.errors import ConfigError
from farm.net import (
    DEFAULT_SERVER,
    Address,
    AddressError,
    ImpossibleSocketPath,
    parse_address,
    socket_path_problem,
)

__all__ = ["TableReader", "ADDRESS_FORMS"]

#: What a job server's address may be, for the fix of one that is not.
ADDRESS_FORMS = f'write HOST:PORT (e.g. "{DEFAULT_SERVER}"), "[::1]:PORT" or "unix:/path"'


class TableReader:
    """Reads the values of one document, read from ``source``; each refusal names it."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base  # relative paths in a file are relative to the file
        # key -> the tables it belongs in ("[server]"): a key written in the wrong table
        # is sent to its own, not taken for a typo of a near name here.
        self.homes: dict[str, list[str]] = {}

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def table(self, raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table ([{key}]), got {_kind(raw)}")
        for name in raw:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.fail(where, f"unknown key; {self.unknown_hint(name, allowed)}")
        return raw

    def unknown_hint(self, name: str, allowed: tuple[str, ...]) -> str:
        """The fix for key ``name`` where only ``allowed`` are: the key it spells in
        another case or with dashes, the table it belongs in, a near key, or the list."""
        spelled = name.lower().replace("-", "_")
        if spelled in allowed:
            return f"did you mean {spelled!r}?"
        if name in self.homes:
            return f"it belongs in {' or '.join(self.homes[name])}; move it there"
        near = difflib.get_close_matches(spelled, allowed, n=1)
        return f"did you mean {near[0]!r}?" if near else f"allowed: {', '.join(allowed)}"

    def count(self, value: Any, key: str) -> int:
        if type(value) is not int or value < 0:
            raise self.fail(key, f"must be a whole number >= 0, got {value!r}")
        return value

    def optional_positive(self, value: Any, key: str, at_most: int | None = None) -> int | None:
        if value is None:
            return None
        if type(value) is not int or value <= 0:
            raise self.fail(
                key, f"must be a whole number > 0 (or left out for no limit), got {value!r}"
            )
        if at_most is not None and value > at_most:
            raise self.fail(key, f"must be at most {at_most}, got {value!r}")
        return value

    def address(self, addr: str, key: str, forms: str = ADDRESS_FORMS) -> Address:
        """``addr`` parsed, its port required (a file says which); Unix paths resolved;
        ``forms`` says what the key takes, for the fix."""
        try:
            parsed = parse_address(addr, default_port=None)
        except ImpossibleSocketPath as exc:  # says its own fix: too long, a NUL
            raise self.fail(key, exc.reason) from None
        except AddressError as exc:
            raise self.fail(key, f"{addr!r}: {exc.reason}; {forms}") from None
        if parsed.kind == "unix":
            path = self.path(parsed.path, key)
            # Else the server failed to bind at every start (exit 1, which systemd restarts),
            # or workers retried a connect that cannot work.
            too_long = socket_path_problem(path, "/run/farm/gearman.sock")
            if too_long:
                raise self.fail(key, too_long)
            return Address("unix", path=path)
        return parsed

    def path(self, value: str, key: str) -> str:
        if not value.strip():
            raise self.fail(key, "must not be empty")
        if "\0" in value:  # no path can hold one: open() and bind() raise ValueError
            raise self.fail(key, f"{value!r} holds a NUL character, which no path can; remove it")
        return resolve(self.base, value)


def _kind(value: Any) -> str:
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        list: "a list",
    }.get(type(value), type(value).__name__)
