"""``?name[]=`` (prometheus_client's filter, a Prometheus job's ``params: name[]``) on both
endpoints: the named samples, and only them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import farm
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import free_port, start_farm_server

POOLS = """
[functions.reverse]
target = "tests.helpers.serving:reverse"
workers = 1
"""

#: One of the supervisor's own, one of the server's, a counter's and a histogram's samples.
NAMES = (
    "farm_server_up",
    "farm_pool_target_workers",
    "farm_jobs_completed_total",
    "farm_job_run_seconds_count",
)


def names_at(url: str) -> dict[str, list[dict[str, str]]]:
    """Each sample name at ``url`` and its label sets."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append(s.labels)
    return found


def query(names: tuple[str, ...]) -> str:
    return "?" + "&".join(f"name[]={name}" for name in names)


@pytest.mark.timeout(90)
def test_a_filtered_scrape_of_farm_up_has_the_named_samples(tmp_path: Path) -> None:
    # The registry had no describe() to find the collector by: 200 and an empty body, so
    # a job scraping with name[] read up=1 and no series, and every alert stayed silent.
    up = FarmUp(tmp_path, POOLS)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        with farm.Client(up.addr) as client:
            assert client.call("reverse", "abc") == b"cba"
        found = names_at(up.metrics_url + query(NAMES))
        assert set(found) == set(NAMES)
        assert {"pool": "reverse"} in found["farm_pool_target_workers"]
        assert {"function": "reverse"} in found["farm_job_run_seconds_count"]
        # Unfiltered, as before: everything (a filtered answer is not given to it).
        assert set(NAMES) < set(names_at(up.metrics_url))
    finally:
        up.stop()


@pytest.mark.timeout(60)
def test_a_filtered_scrape_of_farm_server_metrics_has_the_named_samples() -> None:
    # `farm server --metrics` sent everything whatever the filter: the two endpoints agree.
    port = free_port()
    srv = start_farm_server("--metrics", f"127.0.0.1:{port}")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        asked = ("farm_server_uptime_seconds", "farm_store_commit_seconds_count")
        assert set(names_at(url + query(asked))) == set(asked)
        assert set(asked) < set(names_at(url))
        assert names_at(url + "?name[]=%E2%82%AC") == {}, "a name no sample has: nothing"
    finally:
        srv.stop()
