"""farm_jobs_retried_total counts the times a job went back to the queue, and nothing else:
the worker death that uses a job's last try fails it (farm_jobs_failed_total) and is no
retry, as docs/monitoring.md and the metric's HELP say."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.scraping import fresh_metrics
from tests.helpers.servers import start_farm_server


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value in ``text``; 0 when the series is absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


@pytest.mark.timeout(60)
def test_a_job_out_of_retries_was_retried_one_time_less_than_job_retries(
    peer_factory: Callable[[str], Peer],
) -> None:
    # -j 2: two workers die holding the job. The first death queues it again, the second
    # fails it. The count was taken before the job_retries check: retried 2, failed 1.
    retries = 2
    srv = start_farm_server("-j", str(retries))
    try:
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB, "poison", "", "x")
        handle = client.expect(T.JOB_CREATED).args[0]
        for _ in range(retries):
            doomed = peer_factory(srv.addr)
            doomed.send(T.CAN_DO, "poison")
            doomed.send(T.GRAB_JOB)
            assert doomed.expect(T.JOB_ASSIGN).args[0] == handle
            doomed.sock.close()
        assert client.expect(T.WORK_FAIL, timeout=10).args[0] == handle
        text = fresh_metrics(srv.addr)
        labels = {"function": "poison", "priority": "normal"}
        assert value(text, "farm_jobs_failed_total", **labels) == 1
        assert value(text, "farm_jobs_retried_total", **labels) == retries - 1
        # It started twice: one start for the submit, one for its one retry.
        assert value(text, "farm_job_queue_wait_seconds_count", function="poison") == retries
    finally:
        srv.stop()
