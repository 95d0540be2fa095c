"""A real Prometheus scrapes a real `farm up`, and its query API answers for the farm's
jobs: the exposition is what Prometheus itself reads, not only what our parser accepts."""

from __future__ import annotations

import json
import subprocess
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers.farmproc import FarmUp
from tests.helpers.servers import free_port, need, wait_connectable
from tests.helpers.waiting import wait_for

POOLS = """
[functions.reverse]
target = "tests.helpers.serving:reverse"
workers = 1
"""


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query through Prometheus' HTTP API."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.timeout(120)
def test_prometheus_scrapes_the_farm_and_answers_for_its_jobs(tmp_path: Path) -> None:
    prometheus = need("prometheus")
    up = FarmUp(tmp_path, POOLS)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        textwrap.dedent(f"""
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
        scrape_configs:
          - job_name: farm
            static_configs:
              - targets: ["127.0.0.1:{up.metrics_port}"]
        """)
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        with farm.Client(up.addr) as client:
            for text in ("abc", "def", "ghi"):
                assert client.call("reverse", text) == text[::-1].encode()
        wait_connectable(f"127.0.0.1:{port}", proc, timeout=30)

        def answered() -> list[dict[str, Any]]:
            try:
                return query(base, 'sum(farm_jobs_completed_total{function="reverse"}) == 3')
            except urllib.error.HTTPError as exc:
                if exc.code == 503:  # its storage is still starting
                    return []
                raise

        result = wait_for("Prometheus to have scraped the three jobs", answered, timeout=60)
        assert float(result[0]["value"][1]) == 3
        up_series = query(base, 'up{job="farm"}')
        assert [float(r["value"][1]) for r in up_series] == [1.0]
        assert query(base, 'farm_pool_target_workers{pool="reverse"} == 1')
    except BaseException:
        log.flush()
        print((tmp_path / "prometheus.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        up.stop()
