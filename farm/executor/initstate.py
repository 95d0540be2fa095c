"""What a script's initializer leaves in a worker for that executor's calls.

In ProcessPoolExecutor the initializer and the calls are functions of one ``__main__``
module, so what the initializer sets there (``global STATE; STATE = x``, or
``CACHE["db"] = connect()``) the calls read. Here both travel by value (cloudpickle), each
with globals of its own, so the worker gives a call's function of the script what the
initializer left: the names it rebound, and the mutable data it changed (a dict it filled),
by identity. Constants and data it only read, and functions and classes, stay the call's
own: the call's snapshot of the script is newer (the initializer's was taken with the
executor), and an argument's class must stay the one the call's pickle made. Given once
per initializer run, so that what a call then keeps in its globals (a counter) stays, as in
a pool's process.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import types
from typing import Any

from farm.executor.byvalue import by_value

__all__ = ["forget", "give", "run", "script_globals"]

#: The key, in a by-value function's globals, of the initializer run given to it.
_GIVEN = "__farm_initializer_run__"
_MISSING = object()
#: Values that are never shared unless the initializer rebound their name.
_KEPT = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset, type)
_CODE = (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, functools.partial)

_runs = 0
_left: dict[str, Any] = {}


def script_globals(fn: Any) -> dict[str, Any] | None:
    """The globals of a function of the caller's script (through ``functools.partial``s):
    a dict of its own, made when cloudpickle rebuilt the function by value. None for a
    function of a module, whose globals are that module's here as in the caller."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if getattr(fn, "__module__", None) != "__main__":
        return None
    return getattr(fn, "__globals__", None)


def forget() -> None:
    """Another initializer is about to run: nothing of the last one is given any more."""
    _left.clear()


def run(initializer: Any, initargs: tuple[Any, ...]) -> None:
    """Run the initializer; if it is of the script, keep what it leaves for the calls."""
    global _runs
    script = script_globals(initializer)
    before = dict(script) if script is not None else {}
    data = {name: _pickled(value) for name, value in before.items() if _data(name, value)}
    initializer(*initargs)
    _runs += 1
    if script is None:
        return
    for name, value in script.items():
        if name.startswith("__") and name.endswith("__"):
            continue
        rebound = before.get(name, _MISSING) is not value  # or a name it made
        if rebound or (name in data and _pickled(value) != data[name]):  # a dict it filled
            _left[name] = value


def _data(name: str, value: Any) -> bool:
    """Whether ``value`` is mutable data, which the initializer may fill in place."""
    return not (name.startswith("__") and name.endswith("__")) and not isinstance(
        value, _KEPT + _CODE
    )


def _pickled(value: Any) -> object:
    """A digest of what ``value`` holds, to tell whether the initializer changed it (read
    only, an executor's config dict set after it was made must stay the call's newer copy);
    what will not pickle (a connection put in it) counts as changed each time."""
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        try:  # an instance of a class of the script's, which plain pickle cannot name here
            data = by_value(value)
        except Exception:
            return object()
    return hashlib.blake2b(data, digest_size=16).digest()


def give(fn: Any) -> None:
    """Give a function of the script what the last initializer left, once per run."""
    if not _left:
        return
    script = script_globals(fn)
    if script is not None and script.get(_GIVEN) != _runs:
        script.update(_left)
        script[_GIVEN] = _runs
