"""How farm pickles by value (cloudpickle) what plain pickle would only name: a script's
functions and classes, lambdas, closures (farm.executor.payload's ``dump`` and ``dump_call``
use it when plain pickle fails or would name ``__main__``).

cloudpickle's own Pickler, with what it misses put right: code keeps its file name (a remote
traceback shows the source line), ``functools`` cache wrappers, ``singledispatch`` functions
and cached properties of such classes travel, a class with ``__slots__`` is rebuilt with
them (``_with_slots``), and a class is made once in a process and then left as it is there
(``_found_first``).
"""

from __future__ import annotations

import collections
import functools
import pickle
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from farm.executor import bytecode

__all__ = ["PROTOCOL", "by_value"]

PROTOCOL = pickle.HIGHEST_PROTOCOL
_pickler: Any = None  # the cloudpickle Pickler that keeps file names, once made


def by_value(obj: Any) -> bytes:
    """cloudpickle's pickle of ``obj``, but code keeps its file name: cloudpickle names it
    "<dynamic-code>", and a remote traceback then said neither where nor what (the worker,
    on the same host, shows the source line of a file it can read)."""
    global _pickler
    if _pickler is None:
        import cloudpickle

        reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

        def named(code: types.CodeType) -> tuple[Any, ...]:
            rebuild, args = reduce_code(code)
            return _named_code, (rebuild, args, code.co_filename)

        class Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
            holds_code = False  # bytecode pickled: it needs the guard (bytecode.py)

            def reducer_override(self, obj: Any) -> Any:
                if type(obj) is types.CodeType:  # every code object: a function's, a class's
                    self.holds_code = True
                    return named(obj)
                if isinstance(obj, types.FunctionType) and _is_dispatcher(obj):
                    return _reduce_dispatcher(obj)
                reduced = super().reducer_override(obj)
                if isinstance(obj, type):
                    if "__slots__" in obj.__dict__:
                        reduced = _with_slots(obj, reduced)
                    reduced = _found_first(obj, reduced)
                return reduced

            dispatch_table = collections.ChainMap(
                {
                    _CACHE_WRAPPER: _reduce_cached,
                    functools.cached_property: _reduce_cached_property,
                },
                cloudpickle.Pickler.dispatch_table,
            )

        _pickler = Pickler
    return bytecode.dump(_pickler, obj, PROTOCOL)  # the guard in front when it holds code


#: The type of an ``functools.lru_cache`` (or ``functools.cache``) wrapper.
_CACHE_WRAPPER = type(functools.cache(abs))


def _by_name(obj: Any) -> bool:
    """Whether the worker finds ``obj`` by its name: a module's, not the script's, and not
    made in a function."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    found: Any = module if getattr(module, "__name__", "__main__") != "__main__" else None
    for part in (getattr(obj, "__qualname__", None) or "<unnamed>").split("."):
        found = getattr(found, part, None)
    return found is obj


def _reduce_cached(wrapper: Any) -> Any:
    """A cache wrapper by name where the worker finds it (a module's function), else the
    function it wraps, by value, cached anew there (as a pool's process has a cache of its
    own). By name, one of the script, or made in a function, would not resolve there."""
    if _by_name(wrapper):
        return wrapper.__reduce__()
    settings = wrapper.cache_parameters()
    return _cached, (wrapper.__wrapped__, settings["maxsize"], settings["typed"])


def _cached(fn: Callable[..., Any], maxsize: int | None, typed: bool) -> Any:
    """Unpickling, in the worker: ``fn`` under a cache of its own."""
    return functools.lru_cache(maxsize=maxsize, typed=typed)(fn)


def _is_dispatcher(fn: types.FunctionType) -> bool:
    """A ``functools.singledispatch`` function that travels by value (not by name)."""
    return hasattr(fn, "registry") and hasattr(fn, "dispatch") and not _by_name(fn)


def _reduce_dispatcher(fn: Any) -> tuple[Any, ...]:
    """Its function and the implementations registered: as it is, its closure holds a
    cache of weak references, which does not pickle."""
    registered = [(cls, impl) for cls, impl in fn.registry.items() if cls is not object]
    return _dispatcher, (fn.__wrapped__, registered)


def _dispatcher(fn: Callable[..., Any], registered: list[tuple[type, Any]]) -> Any:
    """Unpickling, in the worker: ``fn`` dispatching again to what was registered."""
    dispatcher = functools.singledispatch(fn)
    for cls, impl in registered:
        dispatcher.register(cls, impl)
    return dispatcher


def _reduce_cached_property(prop: functools.cached_property[Any]) -> tuple[Any, ...]:
    """A cached_property of a class that travels by value: its function, name and doc. As it
    is, it would carry the RLock that Python 3.11's holds, which does not pickle."""
    return _cached_property, (prop.func, prop.attrname, prop.__doc__)


def _cached_property(
    func: Callable[[Any], Any], attrname: str | None, doc: str | None
) -> functools.cached_property[Any]:
    """Unpickling, in the worker: the property, named as in its class (set at class
    creation, which cloudpickle's rebuild of the class does not repeat)."""
    prop = functools.cached_property(func)
    prop.attrname, prop.__doc__ = attrname, doc
    return prop


def _named_code(rebuild: Any, args: tuple[Any, ...], filename: str) -> types.CodeType:
    """Unpickling, in the worker: the code cloudpickle rebuilds, under its own file name."""
    code: types.CodeType = rebuild(*args)
    return code.replace(co_filename=filename)


def _with_slots(cls: type, reduced: Any) -> Any:
    """cloudpickle's rebuild of ``cls`` (a class with ``__slots__``), made with them.

    cloudpickle makes the class without ``__slots__`` and sets it afterwards as a plain
    attribute: the worker's copy had a ``__dict__`` and no slots, its instances pickled
    their state as a dict, and the caller's class, which has slots and no ``__dict__``,
    could not take it back ("'SP' object has no attribute '__dict__'": a script's
    ``@dataclass(slots=True)`` returned by a call failed, where ProcessPoolExecutor's
    came back). Given at the class's making, the slots are real there too."""
    if type(reduced) is not tuple or len(reduced) < 3 or len(reduced[1]) < 4:
        return reduced
    rebuild, args, state, *rest = reduced
    if getattr(rebuild, "__name__", "") != "_make_skeleton_class" or type(args[3]) is not dict:
        return reduced
    if typing.NamedTuple in cls.__dict__.get("__orig_bases__", ()):
        # Its slots are made where the class is (typing's NamedTupleMeta, which cloudpickle's
        # rebuild runs again), and that refuses them in the body: every call with a script's
        # NamedTuple failed "Cannot overwrite NamedTuple attribute __slots__".
        return reduced
    slots = cls.__dict__["__slots__"]
    names = [slots] if isinstance(slots, str) else list(slots)
    args = (*args[:3], {**args[3], "__slots__": slots}, *args[4:])
    if type(state) is tuple and state and type(state[0]) is dict:
        # A private name's descriptor is under its mangled name, which cloudpickle leaves
        # in the state: set on the new class, it would replace the slot made there.
        owner = cls.__name__.lstrip("_")
        mangled = {f"_{owner}{n}" for n in names if n.startswith("__") and not n.endswith("__")}
        state = ({k: v for k, v in state[0].items() if k not in mangled}, *state[1:])
    return (rebuild, args, state, *rest)


def _found_first(cls: type, reduced: Any) -> Any:
    """cloudpickle's rebuild of ``cls``, a class sent by value, made to look for the class
    first (by the id cloudpickle gave it), and to build it, with the state sent, only where
    it is not there: a class is made once in a process, and then left as it is there, as a
    pool's process has the script's classes once (ProcessPoolExecutor's pickles name them).

    cloudpickle built a skeleton class before it looked, which ran ``__init_subclass__`` (and
    a metaclass) each time: a registry it filled, in the worker and, through a result, in the
    caller, held classes with no methods. And it set on the class it found every attribute
    sent: a result put back on the script's class what the call saw (an update the script
    made while the call ran was lost, its methods became copies reading the globals of the
    call's time, what the call wrote came back), and each call put the script's class
    attributes back on the worker's class, undoing what an initializer set there
    (``Cfg.conn = connect()``) and, depending on whether the worker kept the call's
    function unpickled, what earlier calls had.
    """
    if type(reduced) is not tuple or len(reduced) != 6:
        return reduced
    tracker = _tracked("_DYNAMIC_CLASS_TRACKER_BY_CLASS").get(cls)
    rebuild, args, state, _, _, setter = reduced
    if tracker is None or setter is None:
        return reduced
    # One list, in both halves: pickle's memo makes it one object in the unpickling too,
    # which tells the setter what its own look found (a global table did not: two
    # executors' results unpickled at once took each other's mark).
    found: list[bool] = []
    return (
        _class_here,
        (tracker, rebuild, args, found),
        (setter, state, found),
        None,
        None,
        _set_state,
    )


def _tracked(name: str) -> Any:
    """One of cloudpickle's tables of the classes it sent or rebuilt by value (private; an
    empty one where a cloudpickle lacks it, which then sets the state as it always did)."""
    from cloudpickle import cloudpickle as module

    return getattr(module, name, {})


def _class_here(
    tracker: str, rebuild: Callable[..., type], args: tuple[Any, ...], found: list[bool]
) -> type:
    """Unpickling: the class this process has under cloudpickle's ``tracker`` id, noted in
    ``found``, with nothing built first; else cloudpickle's rebuild (a class made in the
    worker). Not by its name in this ``__main__``: a class the worker made under a name the
    script uses too (a ``namedtuple("Row", ...)`` of its own fields) became the script's,
    and a worker's ``__main__`` is farm's, not the script's (a nested call's result)."""
    here: type | None = _tracked("_DYNAMIC_CLASS_TRACKER_BY_ID").get(tracker)
    if here is None:
        return rebuild(*args)
    found.append(True)
    return here


def _set_state(cls: type, setter_state: tuple[Callable[[type, Any], Any], Any, list[bool]]) -> type:
    """Unpickling: the class's state, set only on a class this unpickling made."""
    setter, state, found = setter_state
    if not found:
        setter(cls, state)
    return cls
