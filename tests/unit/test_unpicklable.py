"""What will not pickle in a call is named in a note on pickling's own error (its type and
text stay ProcessPoolExecutor's): the argument by position or keyword, the path inside it,
the function's instance, a class attribute of a class that travels by value."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from farm.executor.payload import ARG_CHUNK, CHUNK, dump_args, dump_fn, note_chunk


def notes(attempt: Any) -> list[str]:
    with pytest.raises(TypeError) as caught:
        attempt()
    assert str(caught.value) == "cannot pickle '_thread.lock' object", "pickling's own"
    return caught.value.__notes__


def test_an_argument_is_named_by_position_or_keyword_with_the_path_inside_it() -> None:
    class Holder:  # made in a function: it travels by value, as a class of the script does
        def __init__(self) -> None:
            self.lock = threading.Lock()

    assert notes(lambda: dump_args((1, threading.Lock()), {})) == [
        "farm: argument 1 of the call cannot be pickled: args[1] (a _thread.lock)"
    ]
    assert notes(lambda: dump_args((1,), {"y": {"k": [0, Holder()]}})) == [
        "farm: keyword argument 'y' of the call cannot be pickled:"
        " kwargs['y']['k'][1].lock (a _thread.lock)"
    ]


def test_the_functions_instance_or_its_class_attribute_is_named() -> None:
    class Guarded:
        lock = threading.Lock()  # the pool imports the script: its processes have their own

        def method(self) -> None:
            pass

    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def method(self) -> None:
            pass

    first, why = notes(lambda: dump_fn(Guarded().method))
    assert first.endswith("cannot be pickled: Guarded.lock (a _thread.lock)"), first
    assert why.startswith("farm: Guarded is a class of the script"), why
    assert notes(lambda: dump_fn(Holder().method)) == [
        "farm: the function of the call cannot be pickled: fn.__self__.lock (a _thread.lock)"
    ]


def test_a_maps_chunk_names_the_call_in_the_map() -> None:
    error = TypeError("cannot pickle '_thread.lock' object")
    note_chunk(error, [1, 2, threading.Lock()], ARG_CHUNK, 10)
    assert error.__notes__ == [
        "farm: argument 0 of the map's call 12 (from 0) cannot be pickled: args[0] (a _thread.lock)"
    ]
    error = TypeError("cannot pickle '_thread.lock' object")
    note_chunk(error, [(1, 2), (3, threading.Lock())], CHUNK, 0)
    assert error.__notes__[0].startswith("farm: argument 1 of the map's call 1 (from 0)")
