"""farm.server.deadlines: many deadlines of one length behind one loop timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from farm.server.deadlines import Deadlines
from farm.server.queues import Timer
from tests.helpers.fakes import FakeClock

LENGTH = 0.05


class Recorder:
    """What fired (key, value, when), and how many loop timers were asked for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fired: list[tuple[str, int, float]] = []
        self.timers = 0
        self.done = asyncio.Event()
        self.expect = 0

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        self.timers += 1
        return self.loop.call_later(delay, callback)

    def on_due(self, key: str, value: int) -> None:
        self.fired.append((key, value, time.monotonic()))
        if len(self.fired) >= self.expect:
            self.done.set()


def run(body: Callable[[Recorder], Awaitable[None]]) -> Recorder:
    async def main() -> Recorder:
        rec = Recorder(asyncio.get_running_loop())
        await body(rec)
        return rec

    return asyncio.run(main())


@pytest.mark.timeout(10)
def test_deadlines_not_met_fire_in_order_on_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(rec: Recorder) -> None:
        d: Deadlines[str, int] = Deadlines(LENGTH, rec.on_due, rec.call_later)
        rec.expect = 3
        started = time.monotonic()
        # Added at one instant: one timer serves deadlines due within its resolution, and
        # a stall between real adds would make them due apart.
        monkeypatch.setattr("farm.server.deadlines.monotonic", lambda: started)
        for i, key in enumerate("abc"):
            d.add(key, i)
        monkeypatch.undo()
        await asyncio.wait_for(rec.done.wait(), 5)
        assert [(k, v) for k, v, _ in rec.fired] == [("a", 0), ("b", 1), ("c", 2)]
        assert all(when - started >= LENGTH - 0.002 for _, _, when in rec.fired), "not early"
        assert rec.timers == 1, "three deadlines, one timer"
        assert len(d) == 0

    run(body)


def test_a_met_deadline_never_fires_and_a_renewed_one_fires_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On the fake clock: on a real loop a stall of the test between the adds would let
    # the first timer fire before the renewal it is about.
    clock = FakeClock.installed(monkeypatch)
    fired: list[tuple[str, int, float]] = []
    d: Deadlines[str, int] = Deadlines(
        0.5, lambda k, v: fired.append((k, v, clock.now)), clock.call_later
    )
    d.add("met", 1)
    d.add("renewed", 2)
    d.add("late", 3)
    d.discard("met")
    clock.advance(0.25)
    d.add("renewed", 4)  # its deadline starts again, behind "late"
    clock.advance(2.0)
    assert fired == [("late", 3, 0.5), ("renewed", 4, 0.75)]
    assert len(clock.timers) == 2, "the timer is armed again for the deadline left"


@pytest.mark.timeout(10)
def test_a_deadline_added_from_on_due_is_kept() -> None:
    async def body(rec: Recorder) -> None:
        d: Deadlines[str, int] = Deadlines(LENGTH, lambda k, v: None, rec.call_later)

        def again(key: str, value: int) -> None:
            rec.on_due(key, value)
            if value < 2:
                d.add(key, value + 1)  # as waking another sleeper starts its deadline

        d.on_due = again
        rec.expect = 3
        d.add("w", 0)
        await asyncio.wait_for(rec.done.wait(), 5)
        assert [v for _, v, _ in rec.fired] == [0, 1, 2]

    run(body)


def test_without_a_loop_nothing_fires_and_discard_forgets() -> None:
    d: Deadlines[str, int] = Deadlines(LENGTH, lambda k, v: pytest.fail("fired"), None)
    d.add("a", 1)
    assert "a" in d and d.timer is None
    d.discard("a")
    d.discard("never added")
    assert len(d) == 0


@pytest.mark.timeout(10)
def test_a_callback_that_raises_does_not_stop_the_deadlines_after_it() -> None:
    async def body(rec: Recorder) -> None:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

        def on_due(key: str, value: int) -> None:
            if key == "bad":
                raise RuntimeError("a bug in one callback")
            rec.on_due(key, value)

        d: Deadlines[str, int] = Deadlines(LENGTH, on_due, rec.call_later)
        rec.expect = 1
        d.add("bad", 0)
        await asyncio.sleep(LENGTH / 2)
        d.add("good", 1)  # due after the bad one's timer has fired
        await asyncio.wait_for(rec.done.wait(), 5)
        assert [k for k, _, _ in rec.fired] == ["good"]
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)

    run(body)


def test_a_deadline_added_by_a_callback_does_not_delay_those_already_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock.installed(monkeypatch)
    fired: list[tuple[str, float]] = []

    def on_due(key: str, value: int) -> None:
        fired.append((key, clock.now))
        if key == "a":
            d.add("c", 0)  # as a wake deadline wakes the next sleeper

    d: Deadlines[str, int] = Deadlines(0.5, on_due, clock.call_later)
    d.add("a", 0)
    clock.now = 0.2
    d.add("b", 0)
    clock.advance(2.0)
    assert fired == [("a", 0.5), ("b", 0.7), ("c", 1.0)]


@pytest.mark.timeout(10)
def test_the_hub_writes_what_a_timer_callback_made_before_it_raised() -> None:
    from farm.server.hub import Hub
    from farm.server.options import parse_args

    class Dirty:
        """A connection with something to write, as the hub's flush sees it."""

        def __init__(self) -> None:
            self.flushed = asyncio.Event()

        def flush(self) -> None:
            self.flushed.set()

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
        hub = Hub(parse_args(["--store", "none"]))
        hub.loop = loop
        conn = Dirty()

        def callback() -> None:
            hub.dirty.append(conn)  # type: ignore[arg-type]  # all that flush calls
            raise RuntimeError("a bug after the reply was made")

        hub.call_later(0, callback)
        await asyncio.wait_for(conn.flushed.wait(), 5)
        return errors

    errors = asyncio.run(main())
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_deadlines_overdue_after_the_loop_stood_still_wait_one_more_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A loop held up past a deadline (a long callback, swapping) may hold unread the very
    # answer that meets it, a woken worker's GRAB_JOB: the timer is put off by one turn so
    # that it is read first, and a worker that came in time is not marked late.
    clock = FakeClock.installed(monkeypatch)
    fired: list[str] = []
    d: Deadlines[str, int] = Deadlines(0.5, lambda key, value: fired.append(key), clock.call_later)
    d.add("met", 0)
    d.add("missed", 0)
    (timer,) = clock.timers
    clock.now = 2.0  # the timer due at 0.5 runs only now
    timer.cancelled = True  # fired, as FakeClock.advance marks it
    timer.callback()
    assert fired == []  # put off
    d.discard("met")  # its answer, read on that turn
    clock.advance(2.1)
    assert fired == ["missed"]
