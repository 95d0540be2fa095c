"""PHP's GearmanClient given several job servers (docs/server.md, PHP's extension): where its
jobs go, beside farm.Client's placement of the same keys."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

import farm
from farm.client.admin import admin_query
from farm.protocol.admin import parse_status
from tests.helpers.servers import need, start_gearmand

pytestmark = pytest.mark.interop

# A GearmanClient each, with a timeout: a call on a client of several servers now and then
# waits for its reply on another server's connection, for ever without setTimeout; about
# one in fifteen here, against gearmand alone too (docs/server.md).
PHP_CLIENT = """
for ($i = 0; $i < 8; $i++) {{
    $c = new GearmanClient();
    $c->setTimeout(2000);
    $c->addServers("{servers}");
    $unique = $i % 2 ? "key-$i" : null;
    @$c->doBackground($i % 2 ? "keyed" : "plain", "x$i", $unique);
    echo $i % 2 ? "keyed" : "plain", ":", $c->returnCode(), "\\n";
}}
"""


def queued(addr: str, function: str) -> int:
    return sum(r.total for r in parse_status(admin_query(addr, "status")) if r.function == function)


def test_php_sends_every_job_to_the_last_server_listed_and_farm_spreads_them() -> None:
    # libgearman 1.1 keeps its servers in a list it adds to at the front, and sends each job
    # to the first there that is up: the last one named. Its keys place nothing, so a key
    # from PHP meets one from farm.Client (or Perl) only where that is the key's server.
    php = need("php")
    servers = [start_gearmand(), start_gearmand(), start_gearmand()]
    try:
        addrs = [s.addr for s in servers]
        out = subprocess.run(
            [php, "-r", PHP_CLIENT.format(servers=",".join(addrs))],
            capture_output=True,
            text=True,
            timeout=30,
        )
        created = Counter(line.split(":")[0] for line in out.stdout.split() if line.endswith(":0"))
        assert sum(created.values()) >= 4, out.stdout + out.stderr  # most calls get through
        for function in ("keyed", "plain"):  # (a call timed out may have been created)
            assert [queued(a, function) for a in addrs[:2]] == [0, 0]
            assert queued(addrs[2], function) >= created[function]
        with farm.Client(addrs) as client:
            for i in range(12):
                client.submit("fkeyed", f"x{i}", unique=f"key-{i}", background=True)
                client.submit("fplain", f"y{i}", background=True)
        assert [queued(a, "fplain") for a in addrs] == [4, 4, 4]
        assert all(queued(a, "fkeyed") for a in addrs)
    finally:
        for s in servers:
            s.stop()
