"""What in a call will not pickle, said in a note on the error pickling raised.

Pickling a call fails with a bare ``TypeError: cannot pickle '_thread.lock' object``,
as in ProcessPoolExecutor; the error stays that (same type, same text, still raised from
``result()``), and a note says where the object was: which argument (``args[1].lock``),
the function's instance, a class attribute of a class of the script, a global of one of
its functions. CPython 3.14 notes the path in its own pickling errors the same way.
Looked for only once pickling has failed, by pickling the parts again one by one.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

__all__ = ["note_args", "note_fn"]

#: How deep into containers and attributes the search goes (each level pickles again).
DEPTH = 4

Dump = Callable[[Any], bytes]


def note_fn(exc: BaseException, fn: Any, dump: Dump) -> None:
    """Add to ``exc`` (raised pickling the call's function ``fn`` with ``dump``) a note
    naming what in it will not pickle, where that can be found."""
    try:
        _note_fn(exc, fn, dump)
    except Exception:  # only a note: never in the way of the error it is on
        pass


def _note_fn(exc: BaseException, fn: Any, dump: Dump) -> None:
    found = unpicklable_global(fn, dump)
    if found is not None:
        exc.add_note(
            f"farm: {found[0]} is a function of the script: it travels by value with"
            f" the globals it uses, and its global {found[1]!r} cannot"
            " be pickled (ProcessPoolExecutor's processes have the script's globals of"
            " their own; the farm's workers do not). Make it inside the function or in"
            " an initializer, or pass what the call needs as arguments"
            " (docs/executor.md, 'What remains different')"
        )
        return
    owner = getattr(fn, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType) or not _fails(owner, dump):
        return
    path, cls = _path(owner, "fn.__self__", dump, DEPTH)
    exc.add_note(f"farm: the function of the call cannot be pickled: {path}")
    if cls is not None:
        exc.add_note(_CLASS_OF_SCRIPT.format(cls=cls))


def note_args(
    exc: BaseException,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dump: Dump,
    call: str = "the call",
) -> None:
    """Add to ``exc`` (raised pickling a call's ``args`` and ``kwargs`` with ``dump``) a
    note naming the first argument that will not pickle alone, and what in it. ``call``
    says whose arguments they are ("the map's call 3")."""
    try:
        _note_args(exc, args, kwargs, dump, call)
    except Exception:  # only a note: never in the way of the error it is on
        pass


def _note_args(
    exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any], dump: Dump, call: str
) -> None:
    named = [(f"argument {at}", f"args[{at}]", arg) for at, arg in enumerate(args)]
    named += [(f"keyword argument {key!r}", f"kwargs[{key!r}]", v) for key, v in kwargs.items()]
    for which, expr, value in named:
        if _fails(value, dump):
            path, cls = _path(value, expr, dump, DEPTH)
            exc.add_note(f"farm: {which} of {call} cannot be pickled: {path}")
            if cls is not None:
                exc.add_note(_CLASS_OF_SCRIPT.format(cls=cls))
            return


_CLASS_OF_SCRIPT = (
    "farm: {cls} is a class of the script (or made in a function): it travels by value"
    " with its class attributes,"
    " where ProcessPoolExecutor's processes import the script and have their own. Make such"
    " an object in the worker (an initializer, or on first use), or define the class in a"
    " module the workers import"
)


def _fails(obj: Any, dump: Dump) -> bool:
    try:
        dump(obj)
    except Exception:
        return True
    return False


def _path(obj: Any, expr: str, dump: Dump, depth: int) -> tuple[str, str | None]:
    """``expr`` (how to reach ``obj``) followed down to the innermost part of ``obj`` that
    will not pickle, with that part's type: ``args[1].lock (a _thread.lock)``; and the
    class of the script whose class attribute it is, if so (the path then starts there:
    ``C.lock``)."""
    if depth:
        for step, part in _parts(obj):
            if not _fails(part, dump):
                continue
            if step.startswith(_CLASS_STEP):  # its class holds it, and travels by value
                cls = type(obj).__qualname__.rpartition("<locals>.")[2]
                path, inner = _path(part, cls + step.removeprefix(_CLASS_STEP), dump, depth - 1)
                return path, inner or cls
            return _path(part, expr + step, dump, depth - 1)
    kind = type(obj)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return f"{expr} (a {name})", None


_CLASS_STEP = "<class>"


def _parts(obj: Any) -> list[tuple[str, Any]]:
    """What ``obj`` pickles with, each with the step that reaches it: items, attributes,
    and for an instance of a class of the script (pickled by value) its class attributes."""
    if isinstance(obj, list | tuple):
        return [(f"[{at}]", item) for at, item in enumerate(obj)]
    if isinstance(obj, dict):
        return [(f"[{key!r}]", value) for key, value in obj.items()]
    parts: list[tuple[str, Any]] = []
    if isinstance(getattr(obj, "__dict__", None), dict):
        parts += [(f".{name}", value) for name, value in vars(obj).items()]
    cls = type(obj)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        own = [(name, value) for name, value in vars(cls).items() if not name.startswith("__")]
        parts += [(f"{_CLASS_STEP}.{name}", value) for name, value in own]
    return parts


def unpicklable_global(fn: Any, dump: Dump) -> tuple[str, str] | None:
    """The name of a script's function (through partials and bound methods) and of the
    first of its globals that ``dump`` refuses, or None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    if not isinstance(fn, types.FunctionType) or fn.__module__ != "__main__":
        return None
    names: list[str] = []
    codes = [fn.__code__]
    while codes:  # the function's code and the code of functions nested in it
        code = codes.pop()
        names.extend(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    for name in dict.fromkeys(names):
        if name not in fn.__globals__:
            continue  # an attribute's name, or a builtin
        if _fails(fn.__globals__[name], dump):
            return fn.__qualname__, name
    return None
