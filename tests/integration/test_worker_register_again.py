"""farm.Worker's ``unregister`` then ``register`` of a function while its grab is out: the
job the server assigned before it read the CANT_DO, and gave back on reading it, is not run
here, and runs once elsewhere or here later (docs/held-grab.md, give-back).

Registered again at once, the CAN_DO made that job look like one of the function served
again: the worker ran it, the server dropped its answer (given back), and it ran again --
under -j 1 ("at most once") thousands of payloads ran twice in a few seconds of flips."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import pytest

import farm
from farm.protocol.worker import WorkerSession
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server
from tests.helpers.serving import grab_answered_late, working
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

CALLERS = 4
FLIPPING = 3.0  # seconds of unregister/register flips while the callers call


def test_flips_under_at_most_once_run_no_payload_twice_and_fail_no_call() -> None:
    srv = start_farm_server("-j", "1")
    try:
        runs: collections.Counter[bytes] = collections.Counter()
        lock = threading.Lock()

        def run(job: Any) -> bytes:
            with lock:
                runs[job.data] += 1
            return bytes(job.data)

        worker = farm.Worker(srv.addr)
        worker.register("f", run)
        stop = threading.Event()
        outcomes: collections.Counter[str] = collections.Counter()

        def calls(n: int) -> None:
            with farm.Client(srv.addr) as client:
                i = 0
                while not stop.is_set():
                    payload = f"{n}-{i}".encode()
                    try:
                        assert client.call("f", payload, timeout=20) == payload
                        outcomes["ok"] += 1
                    except Exception as exc:
                        outcomes[type(exc).__name__] += 1
                    i += 1

        def flips() -> None:
            while not stop.is_set():
                worker.unregister("f")
                worker.register("f", run)
                time.sleep(0.0005)  # room for the callers' jobs between flips

        with working(worker):
            threads = [threading.Thread(target=calls, args=(n,)) for n in range(CALLERS)]
            threads.append(threading.Thread(target=flips))
            for t in threads:
                t.start()
            stop.wait(FLIPPING)
            stop.set()
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads), "a caller never got its answer"
        twice = {data: n for data, n in runs.items() if n > 1}
        assert not twice, f"{len(twice)} payloads ran more than once, e.g. {list(twice)[:3]}"
        assert set(outcomes) == {"ok"}, outcomes
        assert outcomes["ok"] > 0
    finally:
        srv.stop()


def test_a_job_assigned_before_the_server_read_our_cant_do_runs_once_when_registered_again(
    gearmand, caplog
) -> None:
    # gearmand puts the job back in its queue on reading the CANT_DO: registered again at
    # once, the worker ran it as it came, then again when a grab after its CAN_DO got it.
    caplog.set_level(logging.DEBUG, logger="farm.worker")
    ran: list[bytes] = []

    def early(job: Any) -> bytes:
        ran.append(bytes(job.data))
        return bytes(job.data)

    def withdraw_and_register_again(w: farm.Worker, session: WorkerSession) -> None:
        w.unregister("early-fn")
        w.register("early-fn", early)  # all sent behind the grab, gearmand stopped

    with grab_answered_late(gearmand, withdraw_and_register_again) as w:
        with farm.Client(gearmand.addr) as c:
            assert c.call("early-fn", b"next", timeout=10) == b"next"
        wait_for("the given-back job run", lambda: b"abc" in ran)
        wait_for("nothing queued or running", lambda: _idle(gearmand.addr, "early-fn"))
        assert sorted(ran) == [b"abc", b"next"] and w.jobs_done == 2
        assert any("not run here" in r.message for r in caplog.records)


def _idle(addr: str, function: str) -> bool:
    """Whether the admin ``status`` shows no job of ``function`` queued or running."""
    peer = Peer(addr)
    try:
        rows = [line.split("\t") for line in peer.admin("status").splitlines()]
    finally:
        peer.close()
    return all(row[1:3] == ["0", "0"] for row in rows if len(row) == 4 and row[0] == function)
