"""A config file's text read into a TOML document, and the refusals every reader shares.

``farm.config`` (``farm up``, ``farm check``, a reload) and ``farm.discovery`` (the
steering commands, clients, workers, the Executor) both read farm.toml through
:func:`read_config_file`, so a file one of them refuses, the other refuses in the same words.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

from farm.errors import ConfigError

__all__ = ["MAX_DEPTH", "read_config_file", "no_settings"]

#: How deeply a config's tables and arrays may nest. farm.toml's deepest key is four levels
#: (``functions.NAME.env.VAR``); past this the readers' reprs and walks recurse.
MAX_DEPTH: Final = 64


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; ConfigError naming the file for anything unreadable."""
    try:
        with open(path, "rb") as f:
            # utf-8-sig: a byte-order mark, which Windows editors write unseen, is skipped
            # (tomllib read it as "Invalid statement (at line 1, column 1)").
            document = tomllib.loads(f.read().decode("utf-8-sig"))
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read: {e.strerror}; check the path and its permissions"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; is it the right file?") from None
    except ValueError as e:  # not TOMLDecodeError: int()'s limit on a number's 4300 digits
        why = str(e).partition(";")[0]  # its advice, sys.set_int_max_str_digits, is not ours
        raise ConfigError(f"{path}: not valid TOML: {why}; shorten that number") from None
    except RecursionError:  # tomllib reads nested values by recursion
        raise _too_deep(path) from None
    # Dotted keys (a.b.c = 1) and [a.b.c] headers are built without recursion, so tomllib
    # reads them at any depth; the repr of such a value was then a RecursionError traceback.
    if _depth_past(document, MAX_DEPTH):
        raise _too_deep(path)
    return document


def _too_deep(path: Path) -> ConfigError:
    return ConfigError(f"{path}: not valid TOML: values nested too deeply; write them flatter")


def _depth_past(document: dict[str, Any], limit: int) -> bool:
    """Whether a table or array in ``document`` nests more than ``limit`` levels deep;
    walked with a stack of its own, not by recursion, which is what it guards against."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        inside = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in inside if isinstance(v, dict | list))
    return False


def no_settings(source: object) -> ConfigError:
    """A file with no settings (a failed write) ran the built-in farm, port 4730, demo pools."""
    return ConfigError(
        f"{source}: has no settings (empty, or only comments); write the farm's tables in it"
        " (systemd/farm.toml shows them), or name no file to run the built-in defaults"
    )
