"""Stand-ins for the cut-short tests of farm.Client and farm.AsyncClient: a job held until
released, a task whose packet cannot be built (as one of 4 GiB, a MemoryError, a name
that does not encode), what fails there being that call's alone, and a profile hook that
signals the main thread as a request is queued."""

from __future__ import annotations

import signal
import struct
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from farm.protocol.tasks import Task

__all__ = ["ERRORS", "UNBUILDABLE", "held", "unbuildable_packets", "signal_as_queued"]

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


def signal_as_queued(shots: list[str], tag: str) -> Callable[[FrameType, str, Any], None]:
    """A ``sys.setprofile`` hook that sends the main thread SIGUSR1 once (noting ``tag`` in
    ``shots``), as a session queues a request: its packet in the bytes for the wire, its
    answer not yet awaited (``ClientSession._enqueue``'s ``_awaiting.append``)."""

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event != "c_call" or shots or code.co_name != "_enqueue":
            return
        ours = code.co_filename.endswith("farm/protocol/client.py")
        if ours and getattr(arg, "__self__", None) is frame.f_locals["self"]._awaiting:
            shots.append(tag)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    return hook
