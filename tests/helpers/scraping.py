"""Read a Prometheus endpoint the way Prometheus would: one GET, prometheus_client's parser,
and promtool's check where it is installed (required under FARM_REQUIRE_INTEROP)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, *, check: bool = True) -> Samples:
    """Every sample at ``url`` by (name, sorted labels); promtool checks the text first."""
    with urllib.request.urlopen(url, timeout=10) as reply:
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
