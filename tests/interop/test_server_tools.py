"""Off-the-shelf Gearman tools against farm's job server: PHP's pecl gearman
extension, the `gearman` CLI and `gearadmin` (compared with what gearadmin
prints against gearmand)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, need, start_gearmand
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.interop

PHP_WORKER = """
$w = new GearmanWorker();
$w->addServer("127.0.0.1", {port});
$w->addFunction("reverse", function ($job) {{ return strrev($job->workload()); }});
while ($w->work()) {{
    if ($w->returnCode() != GEARMAN_SUCCESS) break;
}}
"""


def php_gearman() -> str:
    php = need("php")
    r = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=20)
    if "gearman" not in r.stdout.split():
        need("php-gearman-extension")  # skips (or fails under FARM_REQUIRE_INTEROP)
    return php


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start background processes; every one is killed at teardown."""
    procs: list[subprocess.Popen] = []

    def start(*cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def admin(srv: Server, cmd: str) -> str:
    p = Peer(srv.addr)
    try:
        return p.admin(cmd)
    finally:
        p.close()


def wait_for_worker(srv: Server, func: str, timeout: float = 10) -> None:
    """Until `status` shows some worker registered for ``func``."""

    def registered() -> bool:
        rows = [line.split("\t") for line in admin(srv, "status").splitlines()]
        return any(r[0] == func and len(r) == 4 and int(r[3]) > 0 for r in rows)

    wait_for(f"a worker registered for {func}", registered, timeout)


def run(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


# -- PHP -----------------------------------------------------------------------


def test_php_worker_and_client_do_normal(farm_server, spawn):
    php = php_gearman()
    spawn(php, "-r", PHP_WORKER.format(port=farm_server.port))
    client = (
        '$c = new GearmanClient(); $c->addServer("127.0.0.1", %d);'
        ' echo $c->doNormal("reverse", "Hello World!"), "|", $c->returnCode();'
    ).replace("%d", str(farm_server.port))
    r = run(php, "-r", client)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"!dlroW olleH|0"


def test_php_do_high_and_do_background(farm_server, spawn):
    php = php_gearman()
    spawn(php, "-r", PHP_WORKER.format(port=farm_server.port))
    client = (
        '$c = new GearmanClient(); $c->addServer("127.0.0.1", %d);'
        ' echo $c->doHigh("reverse", "abc"), "|", $c->returnCode(), "\\n";'
        ' echo $c->doBackground("reverse", "background"), "|", $c->returnCode(), "\\n";'
    ).replace("%d", str(farm_server.port))
    r = run(php, "-r", client)
    assert r.returncode == 0, r.stderr
    high, bg, _ = r.stdout.split(b"\n")
    assert high == b"cba|0"
    handle, _, code = bg.partition(b"|")
    assert re.fullmatch(rb"H:\S+:\d+", handle), bg
    assert code == b"0"
    # the PHP worker runs the background job: the queue drains
    wait_for("the queue drained", lambda: admin(farm_server, "status") == "reverse\t0\t0\t1\n.\n")


def test_php_tasks_with_one_unique_each_complete(farm_server, spawn):
    """Two tasks of one run with the same unique join one job; each hears its own
    WORK_COMPLETE (libgearman matches one reply to one task: one reply hung runTasks)."""
    php = php_gearman()
    spawn(php, "-r", PHP_WORKER.format(port=farm_server.port))
    wait_for_worker(farm_server, "reverse")
    client = (
        '$c = new GearmanClient(); $c->addServer("127.0.0.1", %d); $c->setTimeout(10000);'
        ' $c->setCompleteCallback(function ($t) { echo $t->data(), ";"; });'
        ' $c->addTask("reverse", "abc", null, "samekey");'
        ' $c->addTask("reverse", "abc", null, "samekey");'
        ' $c->runTasks(); echo "|", $c->returnCode();'
    ).replace("%d", str(farm_server.port))
    r = run(php, "-r", client)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"cba;cba;|0"


def test_php_client_sees_work_fail(farm_server, spawn):
    php = php_gearman()
    w = Peer(farm_server.addr)
    try:
        w.send(T.CAN_DO, "reverse")
        w.send(T.PRE_SLEEP)
        client = (
            '$c = new GearmanClient(); $c->addServer("127.0.0.1", %d);'
            ' $r = $c->doNormal("reverse", "x");'
            ' echo $c->returnCode() == GEARMAN_WORK_FAIL ? "WORK_FAIL" : $c->returnCode();'
        ).replace("%d", str(farm_server.port))
        proc = spawn(php, "-r", client)
        w.expect(T.NOOP)
        w.send(T.GRAB_JOB)
        h = w.expect(T.JOB_ASSIGN).args[0]
        w.send(T.WORK_FAIL, h)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out == b"WORK_FAIL"
    finally:
        w.close()


# -- gearman CLI ---------------------------------------------------------------


def test_gearman_cli_worker_and_client(farm_server, spawn):
    gearman = need("gearman")
    need("rev")
    port = str(farm_server.port)
    spawn(gearman, "-h", "127.0.0.1", "-p", port, "-w", "-f", "reverse", "--", "rev")
    wait_for_worker(farm_server, "reverse")
    r = run(gearman, "-h", "127.0.0.1", "-p", port, "-f", "reverse", "Hello")
    assert r.returncode == 0, r.stderr
    # rev adds a newline only when its input ends in one; accept either
    assert r.stdout in (b"olleH", b"olleH\n")


def test_gearman_cli_background(farm_server, spawn):
    gearman = need("gearman")
    port = str(farm_server.port)
    r = run(gearman, "-h", "127.0.0.1", "-p", port, "-b", "-f", "later", "payload")
    assert r.returncode == 0, r.stderr
    assert admin(farm_server, "status") == "later\t1\t0\t0\n.\n"


# -- gearadmin -----------------------------------------------------------------


def scenario(srv: Server) -> tuple[Peer, Peer]:
    """One queued background job for `rev` and one raw worker for it, id `wk`."""
    c = Peer(srv.addr)
    c.send(T.SUBMIT_JOB_BG, "rev", "", "x")
    c.expect(T.JOB_CREATED)
    w = Peer(srv.addr)
    w.send(T.SET_CLIENT_ID, "wk")
    w.send(T.CAN_DO, "rev")
    w.send(T.ECHO_REQ, "sync")
    w.expect(T.ECHO_RES)
    return c, w


def gearadmin(srv: Server, flag: str) -> bytes:
    tool = need("gearadmin")
    r = run(tool, "-h", "127.0.0.1", "-p", str(srv.port), flag)
    assert r.returncode == 0, (flag, r.stderr)
    return r.stdout


def normalise_workers(out: bytes) -> list[bytes]:
    rows = out.split(b"\n")
    assert rows[-2:] == [b".", b""], out
    return sorted(re.sub(rb"^\d+ ", b"FD ", row) for row in rows[:-2])


@pytest.fixture
def both_servers(farm_server) -> Iterator[tuple[Server, Server]]:
    need("gearadmin")
    g = start_gearmand()
    peers = [*scenario(farm_server), *scenario(g)]
    yield farm_server, g
    for p in peers:
        p.close()
    g.stop()


def test_gearadmin_status(both_servers):
    farm, gearmand = both_servers
    assert gearadmin(farm, "--status") == gearadmin(gearmand, "--status") == b"rev\t1\t0\t1\n.\n"


def test_gearadmin_workers(both_servers):
    farm, gearmand = both_servers
    got = normalise_workers(gearadmin(farm, "--workers"))
    assert got == normalise_workers(gearadmin(gearmand, "--workers"))
    assert b"FD 127.0.0.1 wk : rev" in got


def test_gearadmin_server_version(both_servers):
    farm, gearmand = both_servers
    assert re.fullmatch(rb"[0-9][0-9A-Za-z.+~-]*\n", gearadmin(gearmand, "--server-version"))
    assert re.fullmatch(rb"[0-9][0-9A-Za-z.+~-]*\n", gearadmin(farm, "--server-version"))


def test_gearadmin_getpid(both_servers):
    farm, gearmand = both_servers
    assert gearadmin(gearmand, "--getpid") == b"%d\n" % gearmand.proc.pid
    assert gearadmin(farm, "--getpid") == b"%d\n" % farm.proc.pid


def test_gearadmin_show_jobs_and_unique(both_servers):
    farm, gearmand = both_servers
    for srv in (farm, gearmand):
        out = gearadmin(srv, "--show-jobs")
        assert re.fullmatch(rb"H:\S+:\d+\t0\t0\t\d\n\.\n", out), (srv.kind, out)
        assert gearadmin(srv, "--show-unique-jobs") == b"\n.\n"


def gearadmin_with(srv: Server, flag: str, value: str) -> bytes:
    tool = need("gearadmin")
    r = run(tool, "-h", "127.0.0.1", "-p", str(srv.port), flag, value)
    assert r.returncode == 0, (flag, r.stderr)
    return r.stdout


def test_gearadmin_options_print_alike_on_both_servers(both_servers):
    """The options the tests above leave out, each printed the same by both servers (the
    queued job's handle, which differs, is not named: a cancel of an unknown one is)."""
    farm, gearmand = both_servers
    for flag in ("--priority-status", "--server-verbose"):
        assert gearadmin(farm, flag) == gearadmin(gearmand, flag), flag
    for flag, value in (
        ("--create-function", "made"),
        ("--drop-function", "made"),  # no worker, no job: dropped
        ("--drop-function", "nowhere"),
        ("--drop-function", "rev"),  # a worker has it
        ("--cancel-job", "H:nowhere:1"),
    ):
        assert gearadmin_with(farm, flag, value) == gearadmin_with(gearmand, flag, value), flag
    assert gearadmin(farm, "--status") == gearadmin(gearmand, "--status") == b"rev\t1\t0\t1\n.\n"


def test_gearadmin_refuses_a_name_of_two_words_on_both_servers(both_servers):
    """A function or handle given with a space (`--drop-function 'rev extra'`) is refused as
    gearmand refuses it; farm acted on the first word, so a script dropping or cancelling
    what it meant as one name dropped or cancelled another."""
    tool = need("gearadmin")

    def replies(srv: Server, flag: str, value: str) -> tuple[int, bytes, bytes]:
        r = run(tool, "-h", "127.0.0.1", "-p", str(srv.port), flag, value)
        return r.returncode, r.stdout, r.stderr

    farm, gearmand = both_servers
    for flag, value in (
        ("--create-function", "two words"),
        ("--drop-function", "rev extra"),
        ("--cancel-job", "H:nowhere:1 extra"),
    ):
        assert replies(farm, flag, value) == replies(gearmand, flag, value), flag
    for srv in (farm, gearmand):
        handle = gearadmin(srv, "--show-jobs").split(b"\t")[0].decode()
        assert replies(srv, "--cancel-job", f"{handle} extra")[2] == b"Error: UNKNOWN_ERROR\r\n"
    assert gearadmin(farm, "--status") == gearadmin(gearmand, "--status") == b"rev\t1\t0\t1\n.\n"
