"""The worker's list of unsent hooks due (answers lost under the send lock), drained by
whichever thread finds it so: a hook taken by another between the look and the pop."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import farm


@pytest.mark.timeout(10)
def test_a_hook_taken_by_another_thread_between_the_look_and_the_pop_is_no_error() -> None:
    worker = farm.Worker("unix:/nonexistent-farm-dir/farm.sock")  # never connects
    taken: list[Callable[[], None]] = []

    class Raced(list[Callable[[], None]]):
        def __bool__(self) -> bool:
            there = len(self) > 0
            if there and not taken:  # the other thread pops it just after this look
                taken.append(list.pop(self, 0))
            return there

    ran: list[str] = []
    worker._unsent_due = Raced([lambda: ran.append("hook")])
    worker._run_unsent_due()  # raised IndexError: pop from empty list
    assert len(taken) + len(ran) == 1 and not worker._unsent_due  # run once, by one thread
