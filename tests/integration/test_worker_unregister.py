"""farm.Worker's registrations while ``work()`` runs, against farm's server and gearmand:
``unregister(name)`` (CANT_DO) from another thread and from inside a job, and a
``register`` that meets ``work()`` building its sessions."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

import farm
import farm.worker
from farm.protocol.worker import WorkerSession
from tests.helpers.peers import Peer
from tests.helpers.servers import start_like
from tests.helpers.serving import grab_answered_late, reverse, serving, working
from tests.helpers.waiting import wait_for


def _status(addr: str, function: str) -> tuple[int, int, int]:
    """(queued, running, workers) of ``function``, from the admin ``status``."""
    peer = Peer(addr)
    try:
        rows = [line.split("\t") for line in peer.admin("status").splitlines()]
    finally:
        peer.close()
    for row in rows:
        if len(row) == 4 and row[0] == function:
            return int(row[1]), int(row[2]), int(row[3])
    return 0, 0, 0


def _workers_of(addr: str, function: str) -> int:
    return _status(addr, function)[2]


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
    with working(worker):
        wait_for("work() built its sessions", lambda: late.ident is not None)
        late.join(10)
        assert not late.is_alive()
        with farm.Client(any_server.addr) as c:
            assert c.call("late", b"abc", timeout=5) == b"cba"


def test_unregister_stops_serving_one_function_and_the_others_serve_on(any_server) -> None:
    ran_at_b = threading.Event()
    with serving(any_server.addr, {"gone-fn": reverse, "kept-fn": reverse}) as a:
        wait_for("a registered", lambda: _workers_of(any_server.addr, "gone-fn") == 1)
        a.unregister("gone-fn")
        wait_for("a's CANT_DO", lambda: _workers_of(any_server.addr, "gone-fn") == 0)
        with farm.Client(any_server.addr) as c:
            assert c.call("kept-fn", b"abc", timeout=10) == b"cba"
            c.submit("gone-fn", b"x", background=True)
        wait_for("the job queued", lambda: _status(any_server.addr, "gone-fn")[0] == 1)
        assert _status(any_server.addr, "gone-fn")[1] == 0, "a took it"
        with pytest.raises(KeyError):
            a.unregister("gone-fn")  # as libgearman: GEARMAN_NO_REGISTERED_FUNCTION
        with pytest.raises(KeyError):
            a.unregister("never-fn")
        with serving(any_server.addr, {"gone-fn": lambda job: ran_at_b.set()}):
            assert ran_at_b.wait(10), "the job went to no other worker"
    assert a.jobs_done == 1  # kept-fn's


def test_a_function_unregistered_stays_so_across_a_reconnect(any_server) -> None:
    with serving(any_server.addr, {"gone-fn": reverse, "kept-fn": reverse}) as w:
        wait_for("registered", lambda: _workers_of(any_server.addr, "gone-fn") == 1)
        w.unregister("gone-fn")
        any_server.stop()
        restarted = start_like(any_server, port=any_server.port)
        try:
            with farm.Client(any_server.addr) as c:
                assert c.call("kept-fn", b"abc", timeout=10) == b"cba"  # connected again
            assert _workers_of(any_server.addr, "gone-fn") == 0
        finally:
            restarted.stop()


def test_a_job_that_unregisters_its_own_function_ends_normally(any_server) -> None:
    # Its CANT_DO, sent before its answer, made both servers put the job back in its queue
    # and drop the answer: the caller waited for a worker that no longer came.
    worker = farm.Worker(any_server.addr)

    def last(job: Any) -> bytes:
        worker.unregister("last-fn")
        return b"done " + job.data

    worker.register("last-fn", last)
    worker.register("kept-fn", reverse)
    with working(worker):
        with farm.Client(any_server.addr) as c:
            assert c.call("last-fn", b"x", timeout=10) == b"done x"
            wait_for("its CANT_DO", lambda: _workers_of(any_server.addr, "last-fn") == 0)
            assert c.call("kept-fn", b"abc", timeout=10) == b"cba"
        assert worker.jobs_done == 2


def test_a_job_assigned_before_the_server_read_our_cant_do_is_left_to_it(gearmand, caplog) -> None:
    # The grab is answered with the job before gearmand reads the CANT_DO behind it, which
    # puts the job back in its queue: run here, its function gone, it failed as unknown.
    caplog.set_level(logging.DEBUG, logger="farm.worker")

    def withdraw(w: farm.Worker, session: WorkerSession) -> None:
        w.unregister("early-fn")
        wait_for("CANT_DO sent", lambda: session.withdrawn("early-fn"))

    with grab_answered_late(gearmand, withdraw) as w:
        wait_for("the job let go", lambda: any("not run here" in r.message for r in caplog.records))
        assert not [r for r in caplog.records if "raised" in r.message]
        assert w.jobs_done == 0
        ran = threading.Event()
        with serving(gearmand.addr, {"early-fn": lambda job: ran.set()}):
            assert ran.wait(10), "the job was not back in its queue"


def test_a_worker_left_with_no_function_serves_one_registered_later(any_server) -> None:
    with serving(any_server.addr, {"only-fn": reverse}) as w:
        wait_for("registered", lambda: _workers_of(any_server.addr, "only-fn") == 1)
        w.unregister("only-fn")
        wait_for("its CANT_DO", lambda: _workers_of(any_server.addr, "only-fn") == 0)
        w.register("next-fn", reverse)
        with farm.Client(any_server.addr) as c:
            assert c.call("next-fn", b"abc", timeout=10) == b"cba"


def test_unregister_reaches_every_server(farm_server, gearmand) -> None:
    addrs = [farm_server.addr, gearmand.addr]
    with serving(addrs, {"gone-fn": reverse, "kept-fn": reverse}) as w:
        for addr in addrs:
            wait_for(f"registered at {addr}", lambda a=addr: _workers_of(a, "gone-fn") == 1)
        w.unregister("gone-fn")
        for addr in addrs:
            wait_for(f"CANT_DO at {addr}", lambda a=addr: _workers_of(a, "gone-fn") == 0)
            assert _workers_of(addr, "kept-fn") == 1
