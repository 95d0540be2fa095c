"""A module that makes a farm.Executor as it is imported, as a web app's module does (a
module global beside the functions it sends): a farm.python worker imports it to unpickle
those functions, inside a call. Its servers are ``$FARM_SERVERS``'s."""

from __future__ import annotations

import warnings

import farm

with warnings.catch_warnings(record=True) as _caught:
    warnings.simplefilter("always")
    executor = farm.Executor(1)
IMPORT_WARNINGS = [str(w.message) for w in _caught]


def import_warnings() -> list[str]:
    """What making the module's executor warned, where this module was imported."""
    return IMPORT_WARNINGS


def send_from_here() -> tuple[list[str], int]:
    """Inside a call: send one to the module's executor (its own pool); what that warned,
    and the call's result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        future = executor.submit(abs, -2)
    return [str(w.message) for w in caught], future.result(timeout=30)
