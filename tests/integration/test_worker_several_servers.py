"""farm.Worker registered with several job servers while one of them hangs (SIGSTOP): the
live servers' jobs go on being served, and the hung one is served again once it wakes."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

import farm
from tests.helpers.servers import Server, start_farm_server, stop_process
from tests.helpers.serving import reverse, serving


@pytest.fixture
def stopped_server() -> Iterator[Server]:
    """farm's server, SIGSTOPped: its kernel still accepts connections, nothing answers."""
    srv = start_farm_server()
    stop_process(srv.proc.pid)
    try:
        yield srv
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


@pytest.mark.timeout(60)
def test_a_hung_server_holds_no_jobs_of_the_live_one(stopped_server, any_server) -> None:
    # The worker's one grab went to the hung server and waited there for ever: the live
    # server's jobs waited with it (python-gearman and libgearman serve the others).
    servers = [stopped_server.addr, any_server.addr]
    with serving(servers, {"reverse": reverse}, connect_timeout=1):
        with farm.Client(any_server.addr) as live:
            for data in (b"ab", b"cd", b"ef"):
                assert live.call("reverse", data, timeout=20) == data[::-1]
        os.kill(stopped_server.proc.pid, signal.SIGCONT)  # it wakes, and is served again
        with farm.Client(stopped_server.addr) as woken:
            assert woken.call("reverse", b"gh", timeout=20) == b"hg"


@pytest.mark.timeout(30)
def test_stop_returns_though_the_server_of_a_held_grab_hangs(farm_server) -> None:
    # One farm server holds the worker's idle grab (docs/held-grab.md); stop() sends
    # RESET_ABILITIES and waited for the NO_JOB that ends it, from a server that is hung.
    worker = farm.Worker(farm_server.addr, connect_timeout=1)
    worker.register("reverse", reverse)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    with farm.Client(farm_server.addr) as c:
        assert c.call("reverse", b"ab", timeout=20) == b"ba"  # served: its grab is held now
    stop_process(farm_server.proc.pid)
    try:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "work() did not return"
    finally:
        os.kill(farm_server.proc.pid, signal.SIGCONT)
