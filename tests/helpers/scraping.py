"""Read a Prometheus endpoint the way Prometheus would: one GET, prometheus_client's parser,
and promtool's check where it is installed (required under FARM_REQUIRE_INTEROP); and a job
server's exposition made after the asking (``fresh_metrics``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.client.admin import server_metrics
from tests.helpers.waiting import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, *, check: bool = True, headers: dict[str, str] | None = None) -> Samples:
    """Every sample at ``url`` by (name, sorted labels), asked with ``headers`` (as
    Prometheus sends its scrape timeout); promtool checks the text first."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    promtool = shutil.which("promtool")
    if check and promtool is None and os.environ.get("FARM_REQUIRE_INTEROP"):
        pytest.fail("promtool is missing (Debian package prometheus; make deps-test)")
    if check and promtool:
        run = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True
        )
        assert run.returncode == 0, run.stdout + run.stderr
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is absent (as a fresh counter would be)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str, label: str) -> set[str]:
    """The values ``label`` takes across ``name``'s samples."""
    return {dict(labels)[label] for n, labels in samples if n == name and label in dict(labels)}


def fresh_metrics(address: str) -> str:
    """The job server's exposition (admin ``metrics``) made after this call began.

    One that took the server over SLOW_EXPOSITION (0.1 s by the clock, which a loaded
    machine's preemption passes) is given again as it was for ten times as long
    (farm.server.exposition): a test that changed something since read the numbers of
    before. A new exposition differs from the one before it, by its uptime at least, and a
    reused one is the same bytes: the first answer that differs from the last was made new.
    """
    last = server_metrics(address, timeout=10)

    def made_new() -> str | None:
        text = server_metrics(address, timeout=10)
        return text if text != last else None

    return wait_for("an exposition made afresh", made_new, timeout=30)
