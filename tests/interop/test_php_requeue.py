"""A job whose worker lets go of it mid-run is queued again behind the jobs of its priority
that came meanwhile, as gearmand queues it: a job that brings down every worker that runs it
does not hold up the rest of its function. Run against farm's server and gearmand."""

from __future__ import annotations

import subprocess

import pytest

from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from farm.protocol.admin import parse_status
from tests.helpers.servers import Server, need, quiet_process
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.interop

# One function, so that gearmand 1.1's order (one function at a time) is not in play.
# GEARMAN_LOST_CONNECTION from a job makes libgearman drop its connection with no answer
# sent, as a worker that crashes mid-job does, and connect again for its next job: the
# "crash" job is run, lost and queued again for as long as its client waits.
PHP_WORKER = """
$w = new GearmanWorker();
$w->addServer("127.0.0.1", {port});
$w->addFunction("job", function ($job) {{
    if ($job->workload() == "crash") {{ $job->setReturn(GEARMAN_LOST_CONNECTION); }}
    return strrev($job->workload());
}});
while (true) {{ @$w->work(); }}
"""

PHP_CLIENT = """
$c = new GearmanClient();
$c->addServer("127.0.0.1", {port});
$c->setTimeout({timeout_ms});
echo @$c->doNormal("job", "{data}"), "|", $c->returnCode();
"""


def php_client(srv: Server, data: str, timeout_ms: int) -> list[str]:
    script = PHP_CLIENT.format(port=srv.port, data=data, timeout_ms=timeout_ms)
    return [need("php"), "-r", script]


def queued(srv: Server, function: str) -> tuple[int, int]:
    """TOTAL and RUNNING of ``function`` in `status` ((0, 0) when it is not listed)."""
    rows = parse_status(admin_query(srv.addr, "status", timeout=10))
    return next(((r.total, r.running) for r in rows if r.function == function), (0, 0))


def test_a_php_job_that_crashes_its_worker_lets_other_jobs_through(any_server):
    # farm put the lost job back at the head of its queue: the reconnected worker took it
    # again at once, every time, and the second client timed out (returnCode 47); gearmand
    # runs the second client's job between two tries of the crashing one.
    php = need("php")
    worker = [php, "-r", PHP_WORKER.format(port=any_server.port)]
    with (
        quiet_process(*worker),
        quiet_process(*php_client(any_server, "crash", 60_000)) as crashing,
    ):
        wait_for("the crashing job", lambda: queued(any_server, "job")[0] == 1)
        cmd = php_client(any_server, "abc", 15_000)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert out.stdout == "cba|0", (out.stdout, out.stderr)
        assert crashing.poll() is None  # its client waited, so its job was tried all along


@pytest.mark.parametrize("how", ["disconnect", "cant_do", "reset_abilities"])
def test_a_requeued_job_goes_behind_jobs_of_its_priority(any_server, peer_factory, how):
    c = peer_factory(any_server.addr)
    created = []
    for submit, data in ((T.SUBMIT_JOB, "first"), (T.SUBMIT_JOB, "second")):
        c.send(submit, "f", "", data)
        created.append(c.expect(T.JOB_CREATED).args[0])
    w1 = peer_factory(any_server.addr)
    w1.send(T.CAN_DO, "f")
    w1.send(T.GRAB_JOB)
    assert w1.expect(T.JOB_ASSIGN).args[2] == b"first"
    c.send(T.SUBMIT_JOB_LOW, "f", "", "low")
    c.expect(T.JOB_CREATED)
    if how == "disconnect":
        w1.close()
    elif how == "cant_do":
        w1.send(T.CANT_DO, "f")
    else:
        w1.send(T.RESET_ABILITIES)
    w2 = peer_factory(any_server.addr)
    w2.send(T.CAN_DO, "f")
    wait_for("the lost job queued again", lambda: queued(any_server, "f") == (3, 0))
    order = []
    for _ in range(3):
        w2.send(T.GRAB_JOB)
        handle, _, data = w2.expect(T.JOB_ASSIGN).args
        order.append(data)
        w2.send(T.WORK_COMPLETE, handle, b"")
    # after the job of its priority that waited, still before the lower priority
    assert order == [b"second", b"first", b"low"]
