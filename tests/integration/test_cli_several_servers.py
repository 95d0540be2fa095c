"""`farm submit` and `farm worker` given several job servers: a comma-separated --server, as
farm.Client and $FARM_SERVERS take it, and the "no worker" hint about the servers there are."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from farm.cli import app
from farm.client.serverpick import key_slot
from tests.helpers import ROOT
from tests.helpers.hintcheck import held_past_the_hint
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
    held, checks = held_past_the_hint(monkeypatch)

    servers = ["--server", first, "--server", second]
    with serving(second, {"held": held}):
        out = runner.invoke(app, ["submit", "held", "x", "--unique", key, *servers])
    assert (out.exit_code, out.stdout, out.stderr) == (0, "done", "")
    checks.clear()
    out = runner.invoke(app, ["submit", "nobody", "x", "--timeout", "2", *servers])
    assert out.exit_code == 1
    assert f"no worker has registered 'nobody' at {first} or {second};" in out.stderr
