"""A worker and a job server, one of whose hosts goes away without a word (a crash, a cut
network): TCP keepalive tells the other side. A worker connects again; the server gives the
lost worker's job to another."""

from __future__ import annotations

import pytest

from tests.helpers.unreachable import in_namespace, namespaces_usable


@pytest.mark.timeout(90)
@pytest.mark.skipif(not namespaces_usable(), reason="needs root and a network namespace")
def test_a_worker_asleep_on_a_server_whose_host_is_gone_notices_and_connects_again() -> None:
    # Asleep, a worker sends nothing, and a server whose host died sends no FIN nor RST:
    # with no keepalive the worker waited on it for ever, and never registered with it
    # again once it was back (libgearman at least leaves the OS's two-hour keepalive on).
    run = in_namespace()
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 2, run.stdout + run.stderr
    assert lines[0].startswith("noticed "), run.stdout + run.stderr
    assert lines[1] == "served zyx"


@pytest.mark.timeout(90)
@pytest.mark.skipif(not namespaces_usable(), reason="needs root and a network namespace")
def test_the_job_of_a_worker_whose_host_is_gone_goes_to_another_worker() -> None:
    # The server waits on a worker running a job without a word from it; one whose host
    # died sends no FIN nor RST, and with no keepalive its job stayed running for ever.
    run = in_namespace("server")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("served cba "), run.stdout + run.stderr
