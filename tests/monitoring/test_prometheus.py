"""A real Prometheus scrapes a real `farm up`, and its query API answers for the farm's
jobs: the exposition is what Prometheus itself reads, not only what our parser accepts."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import farm
from tests.helpers import ROOT
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


@contextmanager
def prometheus_scraping(tmp_path: Path, static_configs: str) -> Iterator[tuple[str, Any]]:
    """A real Prometheus scraping ``static_configs`` (YAML, under job ``farm``) each second:
    its base URL and process; its log printed when the block raises."""
    prometheus = need("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        textwrap.dedent("""
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
        scrape_configs:
          - job_name: farm
            static_configs:
        """)
        + textwrap.indent(textwrap.dedent(static_configs), "      ")
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
    try:
        yield f"http://127.0.0.1:{port}", proc
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


def ready(base: str, promql: str) -> list[dict[str, Any]]:
    """``query``, or nothing while Prometheus' storage is still starting."""
    try:
        return query(base, promql)
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return []
        raise


@pytest.mark.timeout(120)
def test_prometheus_scrapes_the_farm_and_answers_for_its_jobs(tmp_path: Path) -> None:
    up = FarmUp(tmp_path, POOLS)
    try:
        targets = f'- targets: ["127.0.0.1:{up.metrics_port}"]\n'
        with prometheus_scraping(tmp_path, targets) as (base, proc):
            up.expect_notify("READY=1")
            up.wait_idle({"reverse": 1})
            with farm.Client(up.addr) as client:
                for text in ("abc", "def", "ghi"):
                    assert client.call("reverse", text) == text[::-1].encode()
            wait_connectable(base.removeprefix("http://"), proc, timeout=30)
            result = wait_for(
                "Prometheus to have scraped the three jobs",
                lambda: ready(base, 'sum(farm_jobs_completed_total{function="reverse"}) == 3'),
                timeout=60,
            )
            assert float(result[0]["value"][1]) == 3
            up_series = query(base, 'up{job="farm"}')
            assert [float(r["value"][1]) for r in up_series] == [1.0]
            assert query(base, 'farm_pool_target_workers{pool="reverse"} == 1')
            # The dashboard's list of hosts, as Grafana asks for it (label_values(SELECTOR,
            # instance) is the label values API with SELECTOR as match[]).
            dashboard = json.loads((ROOT / "docs" / "grafana-farm.json").read_text())
            (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
            selector = re.fullmatch(r"label_values\((.*), instance\)", variable["definition"])
            assert selector, variable["definition"]
            url = f"{base}/api/v1/label/instance/values?" + urllib.parse.urlencode(
                {"match[]": selector[1]}
            )
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert json.load(reply)["data"] == [f"127.0.0.1:{up.metrics_port}"]
    finally:
        up.stop()


def legend(fmt: str, labels: dict[str, str]) -> str:
    """A series' name in a Grafana legend: ``{{label}}`` replaced by its value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


@pytest.mark.timeout(120)
def test_every_dashboard_query_draws_and_no_two_of_its_series_share_a_name(
    tmp_path: Path,
) -> None:
    """Every query of docs/grafana-farm.json, as Grafana sends it with every host picked,
    against a Prometheus scraping two hosts: each draws something, and the legends of a
    panel's series all differ.
    (They did not: "in", "out" and "pool#slot" stood for each host's line alike.)"""
    up = FarmUp(tmp_path, POOLS)
    try:
        # One farm scraped as two hosts: two targets, told apart by their instance label.
        address = f"127.0.0.1:{up.metrics_port}"
        targets = "".join(
            f'- targets: ["{address}"]\n  labels: {{instance: "{host}"}}\n'
            for host in ("host-a", "host-b")
        )
        with prometheus_scraping(tmp_path, targets) as (base, proc):
            up.expect_notify("READY=1")
            up.wait_idle({"reverse": 1})
            with farm.Client(up.addr) as client:
                assert client.call("reverse", "abc") == b"cba"
            wait_connectable(base.removeprefix("http://"), proc, timeout=30)
            # rate() needs two samples of each host in its window.
            wait_for(
                "two scrapes of both hosts",
                lambda: len(ready(base, "count_over_time(farm_server_up[1m]) >= 2")) == 2,
                timeout=60,
            )
            dashboard = json.loads((ROOT / "docs" / "grafana-farm.json").read_text())
            clashes, empty = [], []
            for panel in dashboard["panels"]:
                names: dict[str, dict[str, str]] = {}
                for target in panel["targets"]:
                    expr = (
                        target["expr"]
                        .replace("$__rate_interval", "1m")
                        .replace("$instance", ".*")
                        .replace("$function", ".*")
                    )
                    drawn = query(base, expr)
                    if not drawn:  # a panel blank on a working farm: a metric or label gone
                        empty.append((panel["title"], target["refId"]))
                    for series in drawn:
                        labels = series["metric"]
                        name = legend(target.get("legendFormat", ""), labels)
                        if name in names and panel["type"] == "timeseries":
                            clashes.append((panel["title"], name, names[name], labels))
                        names[name] = labels
            assert not empty and not clashes
            # Where a panel draws a line per host, each host's was drawn.
            assert query(base, "count(count by (instance) (farm_worker_rss_bytes)) == 2")
    finally:
        up.stop()
