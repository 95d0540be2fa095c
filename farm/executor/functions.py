"""The worker's calls' functions: each unpickled once and kept, each call given its own copy
of what a callable carries.

A worker keeps the functions it unpickled, by their pickled bytes (and the initializer they
run after): a lambda sent 10,000 times is rebuilt once, a large function's spill file is
read once, and what a function of the script keeps in its globals stays, as in a pool's
process -- up to MAX_FUNCTIONS of them and MAX_KEPT_BYTES of their pickles, the least
recently used going first. What a *callable* carries with it -- a bound method's instance, a
``functools.partial``'s arguments, a callable object's attributes -- ProcessPoolExecutor
pickles with every call, so no call sees what another left there (a list it appended to,
a random generator it advanced); the calls of one chunk share one copy. :func:`for_call`
gives each call (each chunk) such a copy of the kept callable: a deep copy, which copies
the state and keeps functions and classes themselves (and with them their globals).
"""

from __future__ import annotations

import copy
import pickle
import types
from collections.abc import Callable
from typing import Any

from farm.executor import bytecode, spill

__all__ = ["UNIMPORTABLE", "MAX_FUNCTIONS", "load", "for_call", "unpickle"]

#: Said with an ImportError out of unpickling a call's function, its arguments or the
#: executor's initializer: the usual cause is a module beside the script.
UNIMPORTABLE = (
    "farm: the farm's workers import the modules of a call's function, of its arguments'"
    " classes and of an initializer by name, from their own sys.path, working directory and"
    " environment, not the caller's. Install the module where the workers run, or put it on"
    " their PYTHONPATH; functions and classes defined in the script itself travel with the"
    " call (docs/executor.md, 'What remains different')"
)

#: At most this many functions are kept, and at most this many bytes of their pickles
#: (a spilled one's file counted): the least recently used go first, the latest always stays. joblib
#: sends each batch as a function of its own, holding the batch's arguments: kept without
#: a bound, a worker grew by every batch's arrays.
MAX_FUNCTIONS = 256
MAX_KEPT_BYTES = 64 << 20
#: Unpickled functions by their pickled bytes and the digest of the initializer they run
#: after (None: none): executors with different initializers never share a function of the
#: script, whose globals hold what theirs left (farm.executor.initstate). With each, its
#: pickle and its weight (the bytes it was unpickled from); in the order they came.
_kept: dict[tuple[bytes, bytes | None], tuple[Any, bytes, int]] = {}
_kept_bytes = 0

#: Callables that carry no state of their own beyond their globals: one object serves
#: every call. (A builtin bound to an object, ``items.append``, is handled apart.)
_STATELESS = (
    types.FunctionType,
    types.MethodDescriptorType,  # str.upper
    types.WrapperDescriptorType,  # int.__add__
    types.ClassMethodDescriptorType,  # dict.fromkeys
    type,  # a class called to make an object
)


def load(fn_bytes: bytes, initializer: bytes | None) -> Callable[..., Any]:
    """The function ``fn_bytes`` pickles, unpickled on first use and kept."""
    global _kept_bytes
    key = (fn_bytes, initializer)
    kept = _kept.pop(key, None)
    if kept is not None:  # the newest again: a stream of joblib's one-batch functions must
        _kept[key] = kept  # not push out the function every other call uses
    else:
        read_before = spill.loaded_bytes
        fn = unpickle(fn_bytes)
        weight = len(fn_bytes) + spill.loaded_bytes - read_before
        while _kept and (len(_kept) >= MAX_FUNCTIONS or _kept_bytes + weight > MAX_KEPT_BYTES):
            _kept_bytes -= _kept.pop(next(iter(_kept)))[2]
        kept = _kept[key] = (fn, fn_bytes, weight)
        _kept_bytes += weight
    return kept[0]  # type: ignore[no-any-return]  # whatever the caller pickled


def unpickle(data: bytes | memoryview, what: str = "this call's function or an argument") -> Any:
    """``pickle.loads(data)``, in the worker; an ImportError (ModuleNotFoundError: a module
    beside the caller's script, which the caller imported and the worker cannot) says why,
    in a note. Only here: an ImportError the call itself raises is the call's own. Code
    pickled by value by another Python's bytecode is refused unloaded (PythonVersionMismatch,
    farm.executor.bytecode), ``what`` naming it."""
    bytecode.check(data, what)
    try:
        return pickle.loads(data)
    except ImportError as exc:
        exc.add_note(UNIMPORTABLE)
        raise


def for_call(fn: Any, fn_bytes: bytes) -> Any:
    """What one call (or one chunk) runs: ``fn`` itself when it carries no state of its
    own, else a copy of it, as if it had been unpickled from ``fn_bytes`` for this call."""
    if isinstance(fn, _STATELESS):
        return fn
    if isinstance(fn, types.BuiltinFunctionType):
        bound = fn.__self__
        if bound is None or isinstance(bound, types.ModuleType):
            return fn  # len, math.sqrt
        try:
            return getattr(copy.deepcopy(bound), fn.__name__)
        except Exception:
            return pickle.loads(fn_bytes)
    try:
        return copy.deepcopy(fn)  # keeps functions and classes, copies what they hold
    except Exception:  # something that pickles but will not deep-copy
        return pickle.loads(fn_bytes)
