"""PHP command workers and their job server: told where it is in a form libgearman reads
(IPv6 too), and through its death (docs/operations.md, "Command pools", "Job server died").

Found in a PHP developer's review: an IPv6-only farm gave its PHP workers
FARM_SERVERS=[::1]:PORT alone, which addServers() reads as host "[" on port 4730; and each
server death counted the seed's `while ($w->work());` workers as crashed. Skipped where
PHP's gearman extension is absent (failed under FARM_REQUIRE_INTEROP=1).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from farm.client import Client
from farm.errors import JobFailed
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import php
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

CONNECT = """\
$host = getenv("FARM_SERVER_HOST");
if ($host === false) {  // else addServer() would take the default, 127.0.0.1:4730
    fwrite(STDERR, "no FARM_SERVER_HOST\\n");
    exit(1);
}
$w = new GearmanWorker();
$w->addServer($host, (int)getenv("FARM_SERVER_PORT"));
$w->addFunction(getenv("FARM_FUNCTION"), function ($job) { return strrev($job->workload()); });
"""
# The loop of docs/operations.md ("Command pools"): on through the server's restart.
LOOPING = f"""<?php
{CONNECT}
$transient = [GEARMAN_IO_WAIT, GEARMAN_NO_JOBS, GEARMAN_COULD_NOT_CONNECT];
while (@$w->work() || in_array($w->returnCode(), $transient, true)) {{
    if ($w->returnCode() == GEARMAN_COULD_NOT_CONNECT) {{
        sleep(1);  // the server restarts: libgearman connects again on the next work()
    }}
}}
"""
# The seed's loop (workers/php/worker.php): it ends with its server.
PLAIN = f"<?php\n{CONNECT}\nwhile ($w->work());\n"


def pools(tmp_path: Path, **scripts: str) -> str:
    """One-worker command pools, each running its PHP script."""
    tables = ""
    for name, code in scripts.items():
        path = tmp_path / f"{name}.php"
        path.write_text(code)
        tables += f'[functions.{name}]\ncommand = ["{php()}", "{path}"]\nworkers = 1\n'
    return tables


def serving(up: FarmUp, count: int) -> list[dict]:
    """Every slot's worker, once all ``count`` serve (one look at `farm ps`); else none."""
    rows = up.workers()
    return rows if len(rows) == count and all(r["state"] == "running" for r in rows) else []


def ends(up: FarmUp) -> list[str]:
    """The log lines of the plain pool's worker's ends."""
    return re.findall(r".* worker plain#0 .*; restarting .*", up.read_log())


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_php_worker_of_an_ipv6_only_farm_connects_by_host_and_port(tmp_path: Path) -> None:
    if not ipv6_loopback():
        pytest.skip("this host has no ::1 to listen on")
    up = FarmUp(tmp_path, pools(tmp_path, v6rev=LOOPING), start=False)
    text = up.config.read_text()
    up.config.write_text(text.replace(f'"127.0.0.1:{up.port}"', f'"[::1]:{up.port}"'))
    up.start()
    try:
        up.expect_notify("READY=1")
        wait_for("the PHP worker serving", lambda: serving(up, 1), timeout=30)
        with Client(f"unix:{up.unix}") as client:
            assert client.call("v6rev", "Hello", timeout=20) == b"olleH"
    finally:
        assert up.stop() == 0


def test_php_workers_through_a_job_server_kill(tmp_path: Path) -> None:
    # The documented loop keeps its process and serves the new server; the seed's ends,
    # lost its server (no crash, no backoff), and its successor serves.
    up = FarmUp(tmp_path, pools(tmp_path, looping=LOOPING, plain=PLAIN))
    try:
        up.expect_notify("READY=1")
        before = {r["function"]: r["pid"] for r in wait_for("both", lambda: serving(up, 2))}
        for kill in (1, 2):
            up.kill_server()
            wait_for("the plain worker's end logged", lambda k=kill: len(ends(up)) >= k)
            after = {r["function"]: r["pid"] for r in wait_for("both", lambda: serving(up, 2))}
            with Client(up.addr) as client:
                assert client.call("looping", "abc", timeout=20) == b"cba"
                assert client.call("plain", "abc", timeout=20) == b"cba"
        assert after["looping"] == before["looping"] and after["plain"] != before["plain"]
        log = up.read_log()
        assert not re.search(r" worker looping#0 .*; restarting ", log), log
        for line in ends(up):
            assert " INFO " in line and "lost its job server (exited with code 0)" in line, line
            assert "restarting in " not in line and "failing" not in line, line
    finally:
        assert up.stop() == 0


# Registers its pool's function with a 1 s timeout (CAN_DO_TIMEOUT, as docs/operations.md
# tells), runs as many jobs as argv[1] asks and exits 0 (PHP's `$w->work(); exit(0);`).
# A "slow" job outlives its timeout: the server fails it, and its answer comes late.
TIMED = """<?php
$w = new GearmanWorker();
$w->addServer(getenv("FARM_SERVER_HOST"), (int)getenv("FARM_SERVER_PORT"));
$w->addFunction(getenv("FARM_FUNCTION"), function ($job) {
    if ($job->workload() === "slow") {
        sleep(2);
    }
    return "done";
}, null, 1);
for ($i = 0; $i < (int)$argv[1]; $i++) {
    $w->work();
}
exit(0);
"""


@pytest.mark.parametrize("jobs", [["slow"], ["slow", "quick"]])
def test_a_php_worker_that_exits_after_a_timed_out_job_is_recycled(
    tmp_path: Path, jobs: list[str]
) -> None:
    # The late answer of a job that timed out in its hands was dropped uncounted: an exit 0
    # after one such job read "stopped unasked (exited with code 0)", 0 jobs, backed off
    # (0.5 s, 1 s, 2 s, "slot failing"); after two jobs it was logged "after 1 jobs".
    script = tmp_path / "timed.php"
    script.write_text(TIMED)
    command = f'["{php()}", "{script}", "{len(jobs)}"]'
    up = FarmUp(tmp_path, f"[functions.timed]\ncommand = {command}\nworkers = 1\n")
    try:
        up.expect_notify("READY=1")
        wait_for("the PHP worker serving", lambda: serving(up, 1), timeout=30)
        with Client(up.addr) as client:
            for job in jobs:
                if job == "slow":
                    with pytest.raises(JobFailed):
                        client.call("timed", job, timeout=20)
                else:
                    assert client.call("timed", job, timeout=20) == b"done"
        ended = r".* worker timed#0 .*; restarting .*"
        (line, *_) = wait_for("its end logged", lambda: re.findall(ended, up.read_log()))
        assert f"was recycled (exited with code 0 after {len(jobs)} jobs)" in line, line
        assert "restarting now" in line and "stopped unasked" not in line, line
    finally:
        assert up.stop() == 0
