"""Stand-ins for what the job model talks to, for tests that drive it without sockets."""

from __future__ import annotations

from typing import Any

from farm.server.queues import Job, Outcome, Progress


class FakePeer:
    """A connection as farm.server.queues.Peer sees it; records what the model told it."""

    def __init__(self) -> None:
        self.abilities: dict[bytes, float] = {}
        self.running: dict[bytes, Job] = {}
        self.expired: dict[bytes, None] = {}
        self.attached: set[Job] = set()
        self.sleeping = False
        self.woken = False
        self.draining = False
        self.told: list[tuple[Any, ...]] = []

    def wake(self) -> None:
        self.told.append(("wake",))

    def job_progress(self, job: Job, kind: Progress, fields: tuple[bytes, ...]) -> None:
        self.told.append(("progress", job.handle, kind, fields))

    def job_ended(self, job: Job, outcome: Outcome, data: bytes) -> None:
        self.told.append(("ended", job.handle, outcome, data))
