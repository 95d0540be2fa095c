"""The job a worker function is handed (``farm.Worker``): its data, and news for its clients.

A function gets a ``Job`` and may send its waiting clients progress, partial data and
warnings while it runs; the worker that made it writes them (``send``), under the lock
that lets ``Worker.abandon`` fail the job from another thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from farm.protocol.checks import Data, as_bytes, check_status
from farm.protocol.worker import JobAssigned, WorkerSession

__all__ = ["Job"]

#: How a Job's news leaves: the worker's, given the job and what to queue on its session;
#: whether it was written.
Send = Callable[["Job", Callable[[WorkerSession], None]], bool]


class Job:
    """A job in a worker function's hands.

    ``data`` (bytes), ``text`` (data as UTF-8), ``handle``, ``function``, ``unique`` and
    ``timeout`` (the seconds registered for the function, or None), ``server`` (the address
    of the job server it came from); ``send_status``, ``send_data`` and ``send_warning``
    reach the waiting clients at once, while it runs. A ``unique`` that is not UTF-8 comes
    decoded with surrogateescape: ``job.unique.encode("utf-8", "surrogateescape")`` gives
    the client's bytes back.

    ``unsent``, None unless the function sets it: called once, in the worker's thread, when
    the job's answer cannot leave because its job server went away while it ran (what the
    function left for its client to clean up is nobody's then: farm.Executor's large
    result file). The worker knows by a failed write, or, before it writes, by the
    server's end of stream already on the socket (over TCP a write to a killed server
    succeeds). An answer written while the server is still dying (its socket not yet
    closed), or hung and killed later, is lost unseen: not this (farm.Executor's caller
    removes such a call's file as it loses the server; else the sweep does).
    """

    __slots__ = (
        "data",
        "handle",
        "function",
        "unique",
        "timeout",
        "unsent",
        "_server",
        "_send_to",
    )

    def __init__(self, event: JobAssigned, timeout: float | None, server: Any, send: Send) -> None:
        self.data = event.data
        self.handle = event.handle
        self.function = event.function
        self.unique = event.unique
        self.timeout = timeout  # past it the server fails it
        self.unsent: Callable[[], None] | None = None
        self._server = server  # the worker's link to the server that assigned it
        self._send_to = send

    @property
    def server(self) -> str:
        """The address of the job server that handed it out, as the worker names it."""
        return str(self._server.addr)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    def send_status(self, numerator: int, denominator: int) -> None:
        """Progress (WORK_STATUS): the client's on_status and GET_STATUS see it. Each number
        is an int from 0 to 2**32 - 1 (the protocol's, as libgearman's); outside that,
        ValueError (a server drops or mangles such a report)."""
        num, den = check_status(numerator, denominator)
        self._send_to(self, lambda s: s.send_status(num, den))

    def send_data(self, data: Data) -> bool:
        """A chunk of partial result (WORK_DATA) streamed to the client's on_data. True
        when it was written to the job server; False when nobody listens any more (its
        server went away mid-job, or the job has ended): what it names is nobody's."""
        payload = as_bytes(data, "send_data's chunk (WORK_DATA)")  # not the job's own data
        return self._send_to(self, lambda s: s.send_data(payload))

    def send_warning(self, data: Data) -> None:
        """A warning (WORK_WARNING) for the client's on_warning."""
        payload = as_bytes(data, "send_warning's warning (WORK_WARNING)")
        self._send_to(self, lambda s: s.send_warning(payload))

    def __repr__(self) -> str:
        return f"<Job {self.function} {self.handle}>"
