"""PHP's GearmanClient against farm's limits: a request over --max-packet fails that call,
and the client's next call on the same GearmanClient goes through.

farm refused such a packet by closing the connection as soon as its header arrived; PHP
saw a broken pipe mid-send, and its next call read its answer and then waited, with no
timeout set, for ever for the lost one (libgearman's bug, which farm's close set off).
The server now reads the body past and answers ERROR on a connection that goes on.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.servers import need, start_farm_server
from tests.helpers.serving import serving

pytestmark = pytest.mark.interop

# No setTimeout: PHP's default waits for ever, which is how an application is written.
PHP_CLIENT = """
$c = new GearmanClient();
$c->addServer("127.0.0.1", {port});
$big = @$c->doNormal("reverse", str_repeat("x", 5000000));
echo "big:", $c->returnCode() == GEARMAN_SUCCESS ? "ok" : "failed", "\\n";
for ($i = 0; $i < 3; $i++) {{
    echo "small:", @$c->doNormal("reverse", "abc$i"), "|", $c->returnCode(), "\\n";
}}
"""


def reverse(job) -> bytes:
    return job.data[::-1]


def test_a_php_call_over_max_packet_fails_alone_and_the_next_ones_go_through() -> None:
    php = need("php")
    srv = start_farm_server("--max-packet", "100000")
    try:
        with serving(srv.addr, {"reverse": reverse}):
            out = subprocess.run(
                [php, "-r", PHP_CLIENT.format(port=srv.port)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        assert out.stdout.splitlines() == [
            "big:failed",
            "small:0cba|0",
            "small:1cba|0",
            "small:2cba|0",
        ], out.stderr
        assert srv.proc.poll() is None
    finally:
        srv.stop()


# The seed's worker loop: it ends as soon as work() fails.
PHP_WORKER = """
$w = new GearmanWorker();
$w->addServer("127.0.0.1", {port});
$w->addFunction("big", function ($job) {{ return str_repeat("x", (int)$job->workload()); }});
$w->addFunction("rev", function ($job) {{ return strrev($job->workload()); }});
$w->setTimeout(20000);
while ($w->work()) {{ echo "served\\n"; }}
echo "ended:", $w->returnCode(), "\\n";
"""

PHP_CALLS = """
$c = new GearmanClient();
$c->addServer("127.0.0.1", {port});
$c->setTimeout(10000);
echo "rev:", $c->doNormal("rev", "ab"), "|", $c->returnCode(), "\\n";
@$c->doNormal("big", "200000");
echo "big:", $c->returnCode() == GEARMAN_SUCCESS ? "ok" : "failed", "\\n";
echo "rev:", $c->doNormal("rev", "cd"), "|", $c->returnCode(), "\\n";
"""


def test_a_php_workers_result_over_max_packet_fails_its_job_and_the_worker_serves_on() -> None:
    # The server answered the result with ERROR ARGUMENT_TOO_LARGE: the worker's next work()
    # failed ("unexpected packet"), its loop ended, and the next call timed out.
    php = need("php")
    srv = start_farm_server("--max-packet", "100000")
    worker = subprocess.Popen(
        [php, "-r", PHP_WORKER.format(port=srv.port)], stdout=subprocess.PIPE, text=True
    )
    try:
        out = subprocess.run(
            [php, "-r", PHP_CALLS.format(port=srv.port)],
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert out.stdout.splitlines() == ["rev:ba|0", "big:failed", "rev:dc|0"], out
        assert worker.poll() is None, worker.communicate()[0]
    finally:
        worker.kill()
        worker.wait()
        srv.stop()
