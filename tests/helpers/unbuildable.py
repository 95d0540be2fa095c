"""Stand-ins for the cut-short tests of farm.Client and farm.AsyncClient: a job held until
released, and a task whose packet cannot be built (as one of 4 GiB, a MemoryError, a name
that does not encode), what fails there being that call's alone."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from farm.protocol.tasks import Task

__all__ = ["ERRORS", "UNBUILDABLE", "held", "unbuildable_packets"]

#: The errors a packet's build may raise, and the ids tests give them.
ERRORS = [struct.error, MemoryError, UnicodeEncodeError]
#: The function whose tasks' packets ``unbuildable_packets`` makes fail.
UNBUILDABLE = "unbuildable"


def held(release: threading.Event) -> Callable[[Any], bytes]:
    """A job function that returns once ``release`` is set (30 s at most)."""

    def job(job: Any) -> bytes:
        release.wait(30)
        return b"held"

    return job


def unbuildable_packets(monkeypatch: pytest.MonkeyPatch, error: type[Exception]) -> None:
    """Make building the packet of a task for UNBUILDABLE raise ``error``."""
    packet = Task.packet

    def stand_in(task: Task[Any]) -> bytes:
        if task.function == UNBUILDABLE:
            if error is UnicodeEncodeError:
                raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
            raise error("a payload of 4 GiB, say")
        return packet(task)

    monkeypatch.setattr(Task, "packet", stand_in)
