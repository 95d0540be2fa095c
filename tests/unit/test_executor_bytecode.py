"""The guard in front of a by-value pickle (farm/executor/bytecode.py): it names the Python
that made the code, a reader that knows it refuses another's before unpickling anything,
and one that does not (an older farm's worker) runs it before any of the code is built."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import farm
from farm.executor import bytecode, functions
from farm.executor.payload import dump_call, dump_fn

FOREIGN = b"\x01\x00\r\n"


class Marker:
    """Unpickling this creates ``path``: the proof that the data past the guard was read."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def foreign(obj: object) -> bytes:
    """``obj`` pickled by value as a Python of another bytecode would."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(importlib.util, "MAGIC_NUMBER", FOREIGN)
        return dump_fn(obj)


def test_by_value_pickles_name_their_bytecode_and_by_reference_ones_do_not() -> None:
    by_value = dump_fn(lambda x: x + 1)
    assert by_value[bytecode.MAGIC_AT : bytecode.MAGIC_AT + 4] == importlib.util.MAGIC_NUMBER
    assert functions.unpickle(by_value)(1) == 2
    assert dump_fn(abs) == pickle.dumps(abs, protocol=pickle.HIGHEST_PROTOCOL)
    assert dump_call(((1, 2), {})) == pickle.dumps(((1, 2), {}), pickle.HIGHEST_PROTOCOL)
    # An older caller's by-value pickle has no guard: read as before.
    assert functions.unpickle(cloudpickle.dumps(lambda: 3))() == 3


def test_another_pythons_code_is_refused_before_anything_is_unpickled(tmp_path: Path) -> None:
    built = tmp_path / "built"
    data = foreign(lambda: Marker(built))  # a lambda and a class: by value
    with pytest.raises(farm.PythonVersionMismatch, match="pickled by value") as info:
        functions.unpickle(data)
    assert f"magic {FOREIGN.hex()}" in str(info.value)
    assert f"magic {importlib.util.MAGIC_NUMBER.hex()}" in str(info.value)
    # A worker that knows no guard: the guard raises with its message, before the rest.
    data = foreign([Marker(built), lambda: 1])
    with pytest.raises(ValueError, match="farm: this pickle holds code made by Python 3"):
        pickle.loads(data)
    with pytest.raises(ValueError, match="farm: this pickle holds code"):
        pickle._loads(data)  # type: ignore[attr-defined]  # the pure-Python unpickler too
    assert not built.exists()
    pickle.loads(dump_fn([Marker(built), lambda: 1]))  # this Python's: the guard passes
    assert built.exists()


def test_by_value_data_without_code_carries_no_guard() -> None:
    """Only code is bound to a Python's bytecode: by-value data with none reads anywhere."""
    guarded = bytecode.guard()[: bytecode.MAGIC_AT]
    keys = foreign({"a": 1}.keys())  # plain pickle will not take it: by value, no code
    assert not keys.startswith(guarded)
    assert list(functions.unpickle(keys)) == ["a"]
    spelled = dump_call(((len, "__main__"), {}))  # spells __main__: by value (dump_call)
    assert not spelled.startswith(guarded)
    assert pickle.loads(spelled) == ((len, "__main__"), {})
    assert foreign([keys, lambda: 1]).startswith(guarded)  # code beside it: the guard
