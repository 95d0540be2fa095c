"""``farm.Executor``: a ``concurrent.futures.Executor`` whose calls run on the farm.

    executor  the Executor the caller holds (submit, map, shutdown)
    pump      its one thread that owns connections and calls in flight
    call      both ends of a call: encoding it, and ``run_call`` on the worker
    signing   the farm's key and the HMAC on every call and result

Worker processes import only ``call`` and ``signing``; the names below load on
first use so that they do not pay for the caller's side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Executor", "RemoteTraceback", "BrokenFarmExecutor", "DEFAULT_FUNCTION"]

if TYPE_CHECKING:  # pragma: no cover
    from farm.executor.call import DEFAULT_FUNCTION, RemoteTraceback
    from farm.executor.executor import Executor
    from farm.executor.pump import BrokenFarmExecutor

_HOMES = {
    "Executor": "farm.executor.executor",
    "RemoteTraceback": "farm.executor.call",
    "BrokenFarmExecutor": "farm.executor.pump",
    "DEFAULT_FUNCTION": "farm.executor.call",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'farm.executor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
