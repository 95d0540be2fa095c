"""A worker's outcome leaves a class the caller has as the caller has it
(farm.executor.byvalue._found_first), also when two outcomes are unpickled at once:
executors unpickle their results on their own threads, and the mark that said "this class
was here" was one table for all of them, so one result took the other's mark and set the
worker's class attributes on the script's class (7 to 9 of 45 results, three executors)."""

from __future__ import annotations

import pickle
from typing import Any

from farm.executor.byvalue import by_value

#: The second outcome, unpickled while the first one is half done (``_Nested``).
OTHER: list[bytes] = []


def unpickle_the_other() -> str:
    return repr(pickle.loads(OTHER[0]))


class _Nested:
    """Unpickled as the first outcome's class state is: it unpickles the second outcome
    there, between the first one's look for its class and the setting of its state."""

    def __reduce__(self) -> tuple[Any, ...]:
        return unpickle_the_other, ()


def test_two_outcomes_unpickled_at_once_each_leave_the_callers_class_alone() -> None:
    class Item:  # made in a function: it travels by value, as a script's class does
        tag = "worker's"
        hook: Any = None

        def __init__(self, n: int) -> None:
            self.n = n

    Item.hook = _Nested()
    first = by_value(Item(1))  # as the worker sends them back
    Item.hook = None
    OTHER[:] = [by_value(Item(2))]
    Item.tag = "caller's"  # what the caller's class holds when the results come in
    back = pickle.loads(first)
    assert type(back) is Item and back.n == 1
    assert Item.tag == "caller's"
    assert Item.hook is None


def test_a_class_the_caller_does_not_have_is_built_with_its_state() -> None:
    class Made:
        tag = "worker's"

    data = by_value(Made())
    from cloudpickle import cloudpickle

    # As in a caller that never had it: the class is only in the worker's tables.
    tracker = cloudpickle._DYNAMIC_CLASS_TRACKER_BY_CLASS.pop(Made)
    del cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID[tracker]
    back = pickle.loads(data)
    assert type(back) is not Made and type(back).__name__ == "Made"
    assert type(back).tag == "worker's"
