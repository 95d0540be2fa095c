"""A farm Worker serving functions in a thread, and the job functions tests serve."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from farm.client import Client
from farm.protocol.worker import WorkerSession, WorkerState
from farm.worker import Worker
from tests.helpers.servers import Server, stop_process
from tests.helpers.waiting import wait_for


@contextmanager
def serving(
    servers: str | list[str], functions: dict[str, Callable[..., Any]], **kw: Any
) -> Iterator[Worker]:
    """A farm Worker serving ``functions`` in a thread; stopped (and checked) on exit."""
    worker = Worker(servers, **kw)
    for name, fn in functions.items():
        worker.register(name, fn)
    with working(worker):
        yield worker


@contextmanager
def working(worker: Worker) -> Iterator[Worker]:
    """``worker.work()`` in a thread, for a worker the test made (its functions may need
    it); stopped (and checked) on exit."""
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "worker did not stop"


@contextmanager
def grab_answered_late(
    gearmand: Server, withdraw: Callable[[Worker, WorkerSession], None]
) -> Iterator[Worker]:
    """A worker of "idle-fn", asleep on ``gearmand`` with a job of "early-fn" queued, that
    registers "early-fn", sends its grab and then ``withdraw``s it (CANT_DO, RESET_ABILITIES)
    while gearmand is stopped: its answer to the grab, the job, comes after the withdrawal
    once it goes on. Yields the worker, serving on."""
    with Client(gearmand.addr) as c:
        c.submit("early-fn", b"abc", background=True)
    with serving(gearmand.addr, {"idle-fn": reverse}) as w:
        wait_for("the worker connected", lambda: w._servers and w._servers[0].sock)
        session = w._servers[0].session
        wait_for("the worker asleep", lambda: session.state is WorkerState.SLEEPING)
        stop_process(gearmand.proc.pid)  # its answers wait: the race, held open
        try:
            w.register("early-fn", reverse)  # a grab that early-fn's job will answer
            wait_for("the grab sent", lambda: w._grabbing is not None)
            withdraw(w, session)
        finally:
            os.kill(gearmand.proc.pid, signal.SIGCONT)
        yield w


def reverse(job: Any) -> bytes:
    return job.data[::-1]
