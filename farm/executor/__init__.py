"""``farm.Executor``: a ``concurrent.futures.Executor`` whose calls run on the farm.

    executor  the Executor the caller holds (submit, map, shutdown)
    pump      its one thread that owns connections and jobs in flight
    flight    calls and jobs in flight: batching, payloads, outcomes into futures
    payload   the format of a call and its result, and the caller's end of it
    call      the worker's end: ``run_call``
    functions the worker's kept functions; each call's own copy of a callable's state
    replay    the worker's guard against expired and replayed calls
    signing   the farm's key and the HMAC on every call and result

Worker processes import only ``call``, ``functions``, ``payload``, ``replay`` and ``signing``; the
names below load on first use so that they do not pay for the caller's side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Executor", "RemoteTraceback", "BrokenFarmExecutor", "DEFAULT_FUNCTION"]

if TYPE_CHECKING:  # pragma: no cover
    from farm.executor.call import DEFAULT_FUNCTION
    from farm.executor.executor import Executor
    from farm.executor.flight import BrokenFarmExecutor
    from farm.executor.payload import RemoteTraceback

_HOMES = {
    "Executor": "farm.executor.executor",
    "RemoteTraceback": "farm.executor.payload",
    "BrokenFarmExecutor": "farm.executor.flight",
    "DEFAULT_FUNCTION": "farm.executor.call",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'farm.executor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
