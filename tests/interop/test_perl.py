"""Perl's Gearman::Client and Gearman::Worker (Debian's libgearman-client-perl) against farm."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.servers import Server, need, start_farm_server

pytestmark = pytest.mark.interop

PERL_WORKER = r"""
use Gearman::Worker;
my $w = Gearman::Worker->new(job_servers => ['127.0.0.1:%(port)d']);
$w->register_function(reverse => sub { scalar reverse $_[0]->arg });
$w->work while 1;
"""

PERL_CLIENT = r"""
use Gearman::Client;
my $c = Gearman::Client->new(job_servers => ['127.0.0.1:%(port)d']);
my $r = $c->do_task('reverse', 'Hello World!', {timeout => 20});
die "no result\n" unless defined $r;
print $$r;
"""


def perl() -> str:
    path = need("perl")
    probe = subprocess.run([path, "-MGearman::Client", "-e", "1"], capture_output=True)
    if probe.returncode != 0:
        need("perl-Gearman-Client (Debian: libgearman-client-perl)")
    return path


@pytest.fixture
def perl_worker(farm_server: Server) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([perl(), "-e", PERL_WORKER % {"port": farm_server.port}])
    yield proc
    proc.kill()
    proc.wait()


def perl_client_reverses(server: Server) -> None:
    """PERL_CLIENT's call of reverse through ``server`` comes back reversed."""
    out = subprocess.run(
        [perl(), "-e", PERL_CLIENT % {"port": server.port}],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "!dlroW olleH"


def test_perl_client_and_perl_worker_through_farm(
    farm_server: Server, perl_worker: subprocess.Popen
) -> None:
    perl_client_reverses(farm_server)


def test_farm_client_calls_a_perl_worker(
    farm_server: Server, perl_worker: subprocess.Popen
) -> None:
    with farm.Client(farm_server.addr) as client:
        assert client.call("reverse", "abc", timeout=20) == b"cba"


PERL_WORKER_WITH_TIMEOUT = r"""
use Gearman::Worker;
my $w = Gearman::Worker->new(job_servers => ['127.0.0.1:%(port)d']);
$w->register_function(reverse => 2.5 => sub { scalar reverse $_[0]->arg });
$w->work while 1;
"""


def test_a_perl_worker_registered_with_a_fractional_timeout_serves(farm_server: Server) -> None:
    """`register_function(f => 2.5 => sub)` sends CAN_DO_TIMEOUT `2.5`: gearmand reads it with
    atoi (2) and serves; farm's ERROR there made the Perl worker die at its first grab
    ("unexpected packet type: error"), so no job of f ever ran."""
    worker = subprocess.Popen([perl(), "-e", PERL_WORKER_WITH_TIMEOUT % {"port": farm_server.port}])
    try:
        perl_client_reverses(farm_server)
        assert worker.poll() is None, "the Perl worker died"
    finally:
        worker.kill()
        worker.wait()


PERL_WORKER_THAT_DIES = r"""
use Gearman::Worker;
my $w = Gearman::Worker->new(job_servers => ['127.0.0.1:%(port)d']);
$w->register_function(moody => sub { my $a = $_[0]->arg; die "no $a\n" if $a eq 'bad'; $a });
$w->work while 1;
"""


def test_a_perl_worker_whose_function_dies_serves_on(farm_server: Server) -> None:
    """A Perl function that dies makes Gearman::Worker send WORK_EXCEPTION, then WORK_FAIL
    for the same job. The first ended it; the server answered the second with ERROR
    JOB_NOT_FOUND (gearmand does too), and the Perl worker died on it ("unexpected packet
    type: error"): each failing job cost a worker. farm drops that WORK_FAIL quietly."""
    worker = subprocess.Popen([perl(), "-e", PERL_WORKER_THAT_DIES % {"port": farm_server.port}])
    try:
        with farm.Client(farm_server.addr) as client:
            with pytest.raises(farm.JobException, match="no bad"):
                client.call("moody", "bad", timeout=20)
            assert client.call("moody", "good", timeout=20) == b"good"
        assert worker.poll() is None, "the Perl worker died"
    finally:
        worker.kill()
        worker.wait()


PERL_WORKER_LATE_TO_DIE = r"""
use Gearman::Worker;
my $w = Gearman::Worker->new(job_servers => ['127.0.0.1:%(port)d']);
$w->register_function(late => 1 => sub {
    my $a = $_[0]->arg; if ($a eq 'bad') { sleep 2; die "no $a\n" } $a });
$w->work while 1;
"""


def test_a_perl_worker_whose_function_dies_past_its_timeout_serves_on(
    farm_server: Server,
) -> None:
    """Its job failed at its 1 s timeout; the function died later, and the worker's pair
    (WORK_EXCEPTION, then WORK_FAIL) came for a job that had ended: the exception was
    dropped as the late answer, and the WORK_FAIL got ERROR JOB_NOT_FOUND, on which the
    Perl worker died."""
    worker = subprocess.Popen([perl(), "-e", PERL_WORKER_LATE_TO_DIE % {"port": farm_server.port}])
    try:
        with farm.Client(farm_server.addr) as client:
            with pytest.raises(farm.JobFailed):
                client.call("late", "bad", timeout=20)
            # The worker answers it late (2 s in), then takes this one.
            assert client.call("late", "good", timeout=20) == b"good"
        assert worker.poll() is None, "the Perl worker died"
    finally:
        worker.kill()
        worker.wait()


def test_the_stock_perl_worker_serves_every_function_of_its_pool(farm_server: Server) -> None:
    """workers/perl/reverse.pl, as a command pool runs it: `$FARM_FUNCTION` lists the
    pool's functions, comma-separated. It registered the first alone, so a pool of
    `functions = ["reverse", "strrev"]` left strrev's jobs queued for ever."""
    env = {**os.environ, "FARM_SERVERS": farm_server.addr, "FARM_FUNCTION": "perlrev,strrev"}
    stock = ROOT / "workers" / "perl" / "reverse.pl"
    worker = subprocess.Popen([perl(), str(stock)], env=env)
    try:
        with farm.Client(farm_server.addr) as client:
            assert client.call("perlrev", "abc", timeout=20) == b"cba"
            assert client.call("strrev", "xyz", timeout=20) == b"zyx"
    finally:
        worker.kill()
        worker.wait()


PERL_WORKER_OF_FALSE_RESULTS = r"""
use Gearman::Worker;
my $w = Gearman::Worker->new(job_servers => ['127.0.0.1:%(port)d']);
$w->register_function(echo => sub { $_[0]->arg });
$w->work while 1;
"""


@pytest.mark.parametrize("payload", ["", "0"])
def test_a_perl_worker_whose_result_perl_reads_as_false_ends_its_job(
    farm_server: Server, payload: str
) -> None:
    """Gearman::Worker sends WORK_COMPLETE as the bare handle when the result is false in
    Perl ("" or "0"): no NUL, no data. farm answered ERROR, the job stayed the worker's and
    the client waited for ever (gearmand loops on it). The job now ends, with no data: the
    Perl library has already dropped the "0"."""
    worker = subprocess.Popen(
        [perl(), "-e", PERL_WORKER_OF_FALSE_RESULTS % {"port": farm_server.port}]
    )
    try:
        with farm.Client(farm_server.addr) as client:
            assert client.call("echo", payload, timeout=20) == b""
            assert client.call("echo", "next", timeout=20) == b"next"
        assert worker.poll() is None, "the Perl worker died"
    finally:
        worker.kill()
        worker.wait()


PERL_KEYED_CLIENT = r"""
use Gearman::Client;
my $c = Gearman::Client->new(job_servers => [%(servers)s]);
for my $key (@ARGV) {
    my ($uniq, $arg) = split /=/, $key, 2;
    my $h = $c->dispatch_background('held', $arg, {uniq => $uniq});
    die "no handle for $key\n" unless defined $h;
    print "$h\n";
}
"""


def test_a_unique_key_meets_at_one_server_from_perl_and_from_farm(farm_server: Server) -> None:
    # Perl's Gearman::Client places a keyed job at (crc32(key) >> 16 & 0x7fff) % servers (of
    # the payload for "-"); farm placed it at crc32 % servers, so of one key submitted from
    # both, about half ran twice, once on each server, instead of joining one job.
    other = start_farm_server()
    try:
        servers = [farm_server.addr, other.addr]
        keys = [f"key-{i}=data" for i in range(16)] + [f"-=payload {i}" for i in range(8)]
        listed = ", ".join(f"'{addr}'" for addr in servers)
        out = subprocess.run(
            [perl(), "-e", PERL_KEYED_CLIENT % {"servers": listed}, *keys],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        perl_jobs = [tuple(line.split("//", 1)) for line in out.stdout.split()]  # addr//handle
        assert {addr for addr, _ in perl_jobs} == set(servers), "Perl spread the keys"
        with farm.Client(servers) as client:
            tasks = [
                client.submit("held", data, background=True, unique=uniq)
                for uniq, data in (key.split("=", 1) for key in keys)
            ]
        ours = [(task.server, task.handle) for task in tasks]
        assert ours == perl_jobs, "each key joins the job Perl's client queued for it"
    finally:
        other.stop()
