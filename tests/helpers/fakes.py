"""Stand-ins for what the job model talks to, for tests that drive it without sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from farm.server.queues import Job, Outcome, Progress, Timer


class FakePeer:
    """A connection as farm.server.queues.Peer sees it; records what the model told it."""

    def __init__(self) -> None:
        self.abilities: dict[bytes, float] = {}
        self.running: dict[bytes, Job] = {}
        self.expired: dict[bytes, int] = {}
        self.attached: set[Job] = set()
        self.sleeping = False
        self.woken = False
        self.late = False
        self.draining = False
        self.killed = False
        self.gives_back = False
        self.tcp = False
        self.told: list[tuple[Any, ...]] = []

    def wake(self) -> None:
        self.told.append(("wake",))

    def job_progress(self, job: Job, kind: Progress, fields: tuple[bytes, ...]) -> None:
        self.told.append(("progress", job.handle, kind, fields))

    def job_ended(self, job: Job, outcome: Outcome, data: bytes) -> None:
        self.told.append(("ended", job.handle, outcome, data))

    def let_go(self, job: Job) -> None:
        pass  # nothing waits on its reading here

    def catch_up(self) -> None:
        pass  # what it sends is acted on as it comes


@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Timers and a monotonic clock that move only when told (no loop, no waiting)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    @classmethod
    def installed(cls, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
        """A clock that farm.server.deadlines reads as its monotonic one, for this test."""
        clock = cls()
        monkeypatch.setattr("farm.server.deadlines.monotonic", lambda: clock.now)
        return clock

    def advance(self, until: float) -> None:
        while due := [t for t in self.timers if not t.cancelled and t.when <= until]:
            first = min(due, key=lambda t: t.when)
            first.cancelled = True  # fired
            self.now = first.when
            first.callback()
        self.now = until
