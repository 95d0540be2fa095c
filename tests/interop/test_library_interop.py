"""farm's libraries with other Gearman implementations, through gearmand and through farm:
a farm worker serves PHP's GearmanClient and `gearman -f`; a farm client calls PHP's
GearmanWorker and `gearman -w`."""

from __future__ import annotations

import subprocess

import pytest

import farm
from tests.helpers.servers import need, quiet_process
from tests.helpers.serving import serving
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.interop

PHP_WORKER = """
$w = new GearmanWorker();
$w->addServer('127.0.0.1', {port});
$w->addFunction('reverse', function ($job) {{ return strrev($job->workload()); }});
$w->addFunction('phpfail', function ($job) {{ $job->sendFail(); return null; }});
while ($w->work()) {{ }}
"""

PHP_CLIENT = """
$c = new GearmanClient();
$c->addServer('127.0.0.1', {port});
echo $c->doNormal('{function}', '{data}'), "|", $c->returnCode();
"""


def farm_reverse(job):
    return job.data[::-1]


def farm_upper_stream(job):
    job.send_data(b"partial")
    return job.text.upper()


def test_farm_worker_serves_php_client(any_server) -> None:
    php = need("php")
    fns = {"reverse": farm_reverse, "upper": farm_upper_stream}
    with serving(any_server.addr, fns):
        # libgearman hands doNormal's caller the WORK_DATA chunks joined before the result
        cases = [("reverse", "hello php", "php olleh"), ("upper", "ab", "partialAB")]
        for function, data, expected in cases:
            script = PHP_CLIENT.format(port=any_server.port, function=function, data=data)
            out = subprocess.run([php, "-r", script], capture_output=True, text=True, timeout=20)
            assert out.stdout == f"{expected}|0", out.stderr


def test_farm_worker_serves_gearman_cli(any_server) -> None:
    gearman = need("gearman")
    with serving(any_server.addr, {"reverse": farm_reverse}):
        out = subprocess.run(
            [gearman, "-h", "127.0.0.1", "-p", str(any_server.port), "-f", "reverse", "--", "abc"],
            capture_output=True,
            timeout=20,
        )
    assert out.returncode == 0 and out.stdout.strip() == b"cba"


def farm_boom(job):
    raise ValueError("bad input")


def test_a_farm_worker_s_exception_ends_php_and_gearman_cli_calls(any_server) -> None:
    # Through gearmand a WORK_EXCEPTION reached clients without the exceptions option as a
    # malformed WORK_FAIL: the gearman CLI hung on it. farm.Worker asks the server first
    # (OPTION_REQ work-exception) and sends gearmand a plain WORK_FAIL.
    gearman, php = need("gearman"), need("php")
    with serving(any_server.addr, {"boom": farm_boom, "reverse": farm_reverse}) as worker:
        out = subprocess.run(
            [gearman, "-h", "127.0.0.1", "-p", str(any_server.port), "-f", "boom", "--", "x"],
            capture_output=True,
            timeout=20,
        )
        assert out.returncode != 0 and b"fail" in (out.stdout + out.stderr).lower(), out
        script = PHP_CLIENT.format(port=any_server.port, function="boom", data="x")
        php_out = subprocess.run([php, "-r", script], capture_output=True, text=True, timeout=20)
        # PHP asks for exceptions: farm hands it the WORK_EXCEPTION, gearmand a WORK_FAIL.
        expected = "GEARMAN_WORK_EXCEPTION" if any_server.kind == "farm" else "GEARMAN_WORK_FAIL"
        code = subprocess.run([php, "-r", f"echo {expected};"], capture_output=True, text=True)
        assert php_out.stdout == f"|{code.stdout}", php_out
        with farm.Client(any_server.addr) as c:
            assert c.call("reverse", b"ab") == b"ba"  # and the worker went on
        assert worker.jobs_done == 3


def test_a_job_abandoned_says_why_on_a_line_of_its_own_to_the_gearman_cli(any_server) -> None:
    # The gearman CLI writes a WORK_WARNING to stderr as it comes: kill_rss_mb's reason, sent
    # with no newline, ran into the CLI's own line: "...; worker exitsJob failed".
    gearman = need("gearman")
    why = "RSS 214 MiB over kill_rss_mb 150; worker exits"

    def give_up(job):
        assert worker.abandon(job, why)
        return b"never sent"

    with serving(any_server.addr, {"give_up": give_up}) as worker:
        out = subprocess.run(
            [gearman, "-h", "127.0.0.1", "-p", str(any_server.port), "-f", "give_up", "--", "x"],
            capture_output=True,
            timeout=20,
        )
    assert out.returncode != 0 and out.stderr.startswith(f"{why}\n".encode()), out


def test_farm_client_calls_php_worker(any_server) -> None:
    php = need("php")
    script = PHP_WORKER.format(port=any_server.port)
    with quiet_process(php, "-r", script), farm.Client(any_server.addr) as c:
        assert c.call("reverse", b"from farm", timeout=20) == b"mraf morf"
        assert list(c.map("reverse", [b"ab", b"cd", b"ef"])) == [b"ba", b"dc", b"fe"]
        with pytest.raises(farm.JobFailed):
            c.call("phpfail", b"x", timeout=20)


def test_farm_client_calls_gearman_cli_worker(any_server) -> None:
    gearman = need("gearman")
    rev = need("rev")
    cmd = [gearman, "-h", "127.0.0.1", "-p", str(any_server.port), "-w", "-f", "reverse"]
    with quiet_process(*cmd, "--", rev), farm.Client(any_server.addr) as c:
        wait_for("`gearman -w` to answer", lambda: c.call("reverse", b"hello\n", timeout=20), 20)
        assert c.call("reverse", b"gearman\n", timeout=20).strip() == b"namraeg"
