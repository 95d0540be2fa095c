"""farm.Worker's registrations while ``work()`` runs, against farm's server and gearmand:
``unregister(name)`` (CANT_DO) from another thread and from inside a job, and a
``register`` that meets ``work()`` building its sessions."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import farm
import farm.worker
from farm.protocol.worker import WorkerSession
from tests.helpers.serving import reverse
from tests.helpers.waiting import wait_for


class _SpiedLock:
    """The worker's send lock, telling which thread holds it and when ``watched`` asks for
    it: the test's way to stop between two statements of ``work()`` without sleeping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None
        self.watched: threading.Thread | None = None
        self.asked = threading.Event()

    def __enter__(self) -> _SpiedLock:
        if threading.current_thread() is self.watched:
            self.asked.set()
        self._lock.acquire()
        self.owner = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner = None
        self._lock.release()


def test_a_function_registered_while_work_builds_its_sessions_is_served(
    any_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # work() copied the registrations into each new session, then made the sessions the
    # worker's: a register() from another thread between the two was in neither, and its
    # function was never registered anywhere (until a reconnect).
    worker = farm.Worker(any_server.addr)
    worker.register("first", reverse)
    lock = worker._send_lock = _SpiedLock()  # type: ignore[assignment]  # a Lock's face
    late = lock.watched = threading.Thread(target=worker.register, args=("late", reverse))

    class RegisterMeanwhile(WorkerSession):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            late.start()
            assert lock.asked.wait(10), "register() never asked for the send lock"
            if lock.owner != threading.get_ident():  # free: let register() end here
                late.join(10)

    monkeypatch.setattr(farm.worker, "WorkerSession", RegisterMeanwhile)
    serving = threading.Thread(target=worker.work, daemon=True)
    serving.start()
    try:
        wait_for("work() built its sessions", lambda: late.ident is not None)
        late.join(10)
        assert not late.is_alive()
        with farm.Client(any_server.addr) as c:
            assert c.call("late", b"abc", timeout=5) == b"cba"
    finally:
        worker.stop()
        serving.join(10)
