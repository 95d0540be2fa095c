"""docs/monitoring.md and the example Grafana dashboard name only metrics farm exports."""

from __future__ import annotations

import json
import re

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
        names |= {f"farm_jobs_{field}" for field in re.findall(r'^\s+\("(\w+)", "', source, re.M)}
    return names


def test_every_exported_metric_is_documented_and_nothing_else() -> None:
    assert documented() == exported()


def test_the_grafana_dashboard_uses_only_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-farm.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {family(name) for expr in exprs for name in re.findall(r"farm_\w+", expr)}
    assert used and used <= documented()
