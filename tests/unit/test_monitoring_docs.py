"""docs/monitoring.md and the example Grafana dashboard name only metrics farm exports."""

from __future__ import annotations

import json
import re

from farm.server.metrics import COUNTER_FIELDS
from tests.helpers import ROOT

SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def documented() -> set[str]:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    rows = re.findall(r"^\| `(farm_\w+)", text, flags=re.MULTILINE)
    return {family(name) for name in rows}


def exported() -> set[str]:
    """The families the two collectors create (their source names each one)."""
    names: set[str] = set()
    for path in ("farm/server/exposition.py", "farm/pools/metrics.py"):
        source = (ROOT / path).read_text()
        names |= set(re.findall(r'"(farm_\w+)"', source))
    return names | {f"farm_jobs_{field}" for field in COUNTER_FIELDS}  # named by a loop


def test_every_exported_metric_is_documented_and_nothing_else() -> None:
    assert documented() == exported()


def test_the_grafana_dashboard_uses_only_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-farm.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {family(name) for expr in exprs for name in re.findall(r"farm_\w+", expr)}
    assert used and used <= documented()


def unit_for(expr: str) -> str:
    """The Grafana unit a dashboard query's values are in, from the metric it reads."""
    if "histogram_quantile" in expr and "_seconds_bucket" in expr:
        return "s"
    if "farm_worker_cpu_seconds_total" in expr:
        return "percentunit"  # CPU seconds a second: the share of one core
    if "_bytes_total" in expr:
        return "Bps"
    if re.search(r"farm_\w+_bytes\b", expr):
        return "bytes"
    if "rate(" in expr:
        return "ops"
    return "short"  # counts (increase() included), gauges of things


def test_each_grafana_series_is_drawn_in_the_unit_of_its_query() -> None:
    # One panel drew commits/s, a p99 commit time in seconds and the store's size in bytes
    # on one "short" axis: the store's megabytes flattened the rest, the p99 read as 0.
    dashboard = json.loads((ROOT / "docs" / "grafana-farm.json").read_text())
    wrong = []
    for panel in dashboard["panels"]:
        config = panel["fieldConfig"]
        by_ref = {
            o["matcher"]["options"]: p["value"]
            for o in config["overrides"]
            if o["matcher"]["id"] == "byFrameRefID"
            for p in o["properties"]
            if p["id"] == "unit"
        }
        for target in panel["targets"]:
            unit = by_ref.get(target["refId"], config["defaults"]["unit"])
            if unit != unit_for(target["expr"]):
                wrong.append((panel["title"], target["refId"], unit, unit_for(target["expr"])))
    assert not wrong


def test_the_data_source_picked_at_import_is_the_one_the_panels_use() -> None:
    """Grafana's import asks for each of ``__inputs`` and writes the choice wherever
    ``${NAME}`` stands: an input nothing names is a question whose answer is dropped."""
    text = (ROOT / "docs" / "grafana-farm.json").read_text()
    dashboard = json.loads(text)
    assert dashboard["__inputs"], "the dashboard asks for its data source at import"
    for wanted in dashboard["__inputs"]:
        assert "${" + wanted["name"] + "}" in text, wanted["name"]
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"
