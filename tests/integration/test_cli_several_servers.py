"""`farm submit` and `farm worker` given several job servers: a comma-separated --server, as
farm.Client and $FARM_SERVERS take it, and the "no worker" hint about the servers there are."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

import farm.cli.watch
from farm.cli import app
from farm.client.serverpick import key_slot
from tests.helpers import ROOT
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.serving import serving
from tests.helpers.waiting import wait_for

runner = CliRunner()


@pytest.fixture
def two_servers(any_server: Server) -> Iterator[list[Server]]:
    other = start_farm_server()
    yield [other, any_server]
    other.stop()


def _workers_of(addr: str, function: str) -> int:
    from farm.client.admin import admin_query
    from farm.protocol.admin import parse_status

    rows = parse_status(admin_query(addr, "status"))
    return sum(r.workers for r in rows if r.function == function)


@pytest.mark.timeout(60)
def test_server_takes_a_comma_separated_list(two_servers: list[Server]) -> None:
    # "--server a,b" was read as one address: "an IPv6 address with a port takes brackets".
    addrs = [s.addr for s in two_servers]
    both = ",".join(addrs)
    worker = subprocess.Popen(
        [sys.executable, "-m", "farm", "worker", "workers.text:reverse", "--server", both],
        cwd=ROOT,
    )
    try:
        for addr in addrs:
            wait_for(f"the worker at {addr}", lambda a=addr: _workers_of(a, "reverse"), 20)
        for servers in (both, addrs[0], addrs[1]):
            out = runner.invoke(app, ["submit", "reverse", "hello", "--server", servers])
            assert (out.exit_code, out.stdout) == (0, "olleh"), out.stderr
    finally:
        worker.terminate()
        assert worker.wait(20) == 0


@pytest.mark.timeout(60)
def test_the_no_worker_hint_asks_every_server(
    two_servers: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It asked only the first server listed: a job running on the second, where the
    # worker is, was said to wait for a worker "at" the first.
    first, second = (s.addr for s in two_servers)
    key = next(k for k in map(str, range(100)) if key_slot(k, 2) == 1)  # second's
    checks: list[threading.Timer] = []

    class Timer(threading.Timer):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            checks.append(self)

    monkeypatch.setattr(farm.cli.watch, "NO_WORKER_AFTER", 0.05)
    monkeypatch.setattr(threading, "Timer", Timer)

    def held(job: Any) -> bytes:  # until the hint's check has looked
        wait_for("the hint's check", lambda: checks and checks[0].finished.is_set())
        return b"done"

    servers = ["--server", first, "--server", second]
    with serving(second, {"held": held}):
        out = runner.invoke(app, ["submit", "held", "x", "--unique", key, *servers])
    assert (out.exit_code, out.stdout, out.stderr) == (0, "done", "")
    checks.clear()
    out = runner.invoke(app, ["submit", "nobody", "x", "--timeout", "2", *servers])
    assert out.exit_code == 1
    assert f"no worker has registered 'nobody' at {first} or {second};" in out.stderr
