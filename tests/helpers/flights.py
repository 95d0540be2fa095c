"""What the executor's flight code (farm.executor.flight) is tested with, without a pump: the
pump's task as flight sees it, and a signer."""

from __future__ import annotations

from farm.executor.flight import Flight
from farm.executor.signing import Signer

#: The signer of the tests' calls and outcomes (both ends: one key).
SIGNER = Signer(b"k" * 32)


class Task:
    """The pump's task as flight sees it: its calls, and the job's end."""

    def __init__(self, owner: Flight) -> None:
        self.owner = owner
        self.handle = "H:1"
        self.error: BaseException | None = None
        self.result: bytes | None = None
