"""A script's class with ``__slots__`` travels by value with its slots
(farm.executor.byvalue._with_slots): cloudpickle rebuilt it in the worker without them, so an
instance made there came back as a dict of state that the caller's class, which has no
``__dict__``, refused: "'SP' object has no attribute '__dict__'"."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from farm.executor.payload import dump, dump_call
from tests.helpers import ROOT

#: In a fresh interpreter (the worker, as it were): rebuild the class from its pickle, make
#: an instance there, and send it back as a worker sends a result.
WORKER = textwrap.dedent(
    """
    import pickle, sys
    from farm.executor.payload import dump
    cls, args = pickle.loads(bytes.fromhex(sys.stdin.read()))
    made = cls(*args)
    try:
        made.not_a_slot = 1
    except AttributeError:
        refused = True
    else:
        refused = False
    print(dump((made, refused, hasattr(made, "__dict__"))).hex())
    """
)


def classes() -> dict[str, type]:
    """Classes made in a function: cloudpickle sends them by value, as a script's."""

    class Plain:
        __slots__ = ("a", "b")

        def __init__(self, a: int, b: int) -> None:
            self.a, self.b = a, b

        def __eq__(self, other: object) -> bool:
            return type(other) is type(self) and (self.a, self.b) == (other.a, other.b)  # type: ignore[attr-defined]

    @dataclasses.dataclass(slots=True)
    class Data:
        x: int
        y: str

    class Private:
        __slots__ = ("__secret",)

        def __init__(self, secret: int) -> None:
            self.__secret = secret

        def __eq__(self, other: object) -> bool:
            return type(other) is type(self) and self.__secret == other.__secret  # type: ignore[attr-defined]

    return {"Plain": Plain, "Data": Data, "Private": Private}


ARGS: dict[str, tuple[Any, ...]] = {"Plain": (1, 2), "Data": (3, "z"), "Private": (7,)}


@pytest.mark.parametrize("name", sorted(ARGS))
def test_an_instance_made_where_the_class_was_rebuilt_comes_back(name: str) -> None:
    cls = classes()[name]
    sent = dump_call((cls, ARGS[name]))
    worker = subprocess.run(
        [sys.executable, "-c", WORKER],
        input=sent.hex(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    back, refused, has_dict = pickle.loads(bytes.fromhex(worker.stdout))
    assert type(back) is cls and back == cls(*ARGS[name])
    # The worker's class has real slots, as the script's: no attribute beside them.
    assert refused and not has_dict


def test_an_instance_sent_and_sent_back_keeps_its_slots() -> None:
    cls = classes()["Data"]
    item = cls(5, "q")
    again = pickle.loads(dump(pickle.loads(dump_call(item))))
    assert again == item and not hasattr(again, "__dict__")
