"""CallFuture's done-callbacks (farm/executor/futures.py): settled by a thread doing the
pump's work, a future runs its leading ``Prompt`` callbacks there and hands the rest to
the pump thread, in the order they were added; settled by any other thread, it runs them
all at once, as Future does. One added to a done future runs at once in the adding thread,
as Future's, also while earlier ones wait for the pump thread. The pump here is a stand-in
that only says whether the settling thread helps it, and takes what it is handed: the
threads themselves are tests/integration/test_executor_callbacks.py's."""

from __future__ import annotations

import threading
from concurrent.futures._base import RUNNING
from typing import Any

import pytest

from farm.executor.futures import CallFuture, Prompt


class Pump:
    """What CallFuture asks of its pump about callbacks."""

    def __init__(self, *, helping: bool) -> None:
        self.helping = helping
        self.later: list[CallFuture[Any]] = []

    def helping_here(self) -> bool:
        return self.helping

    def call_later(self, future: CallFuture[Any]) -> None:
        self.later.append(future)

    def interrupt_reader(self) -> None:
        pass


def running(pump: Pump) -> CallFuture[Any]:
    future: CallFuture[Any] = CallFuture(pump, threading.Condition())  # type: ignore[arg-type]
    future._state = RUNNING
    return future


def test_a_helper_runs_the_prompt_ones_and_hands_the_rest_over_in_order() -> None:
    pump = Pump(helping=True)
    future, ran = running(pump), []
    future.add_done_callback(Prompt(lambda _: ran.append("prompt")))
    future.add_done_callback(lambda _: ran.append("first"))
    future.add_done_callback(Prompt(lambda _: ran.append("prompt after")))  # waits its turn
    future.set_result(1)
    assert ran == ["prompt"] and pump.later == [future]
    # Done: it runs at once, here, as Future's, not behind the ones waiting for the pump.
    future.add_done_callback(lambda _: ran.append("added once done"))
    assert ran == ["prompt", "added once done"], "a callback added to a done future waited"
    assert future.run_callbacks()  # the pump thread's turn
    assert ran == ["prompt", "added once done", "first", "prompt after"]
    future.add_done_callback(lambda _: ran.append("at once"))  # none waits: as Future's
    assert ran[-1] == "at once"


def test_any_other_thread_runs_them_all_at_once() -> None:
    pump = Pump(helping=False)
    future, ran = running(pump), []
    future.add_done_callback(lambda _: ran.append("first"))
    future.add_done_callback(Prompt(lambda _: ran.append("second")))
    future.set_exception(ValueError("failed"))
    assert ran == ["first", "second"] and pump.later == []


def test_an_exception_is_logged_and_a_base_exception_stops_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    future, ran = running(Pump(helping=False)), []

    def fails(_: object) -> None:
        raise ValueError("a callback's bug")

    def exits(_: object) -> None:
        raise SystemExit(3)

    future.add_done_callback(fails)
    future.add_done_callback(lambda _: ran.append("after the bug"))
    future.add_done_callback(exits)
    future.add_done_callback(lambda _: ran.append("after the exit"))
    with pytest.raises(SystemExit):
        future.set_result(1)
    assert ran == ["after the bug"]  # the rest left unrun, as Future leaves them
    assert "a callback's bug" in caplog.text
    future.add_done_callback(lambda _: ran.append("later"))  # not queued behind for ever
    assert ran == ["after the bug", "later"]
