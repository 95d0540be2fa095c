"""docs/monitoring.md and the example Grafana dashboard name only metrics farm exports."""

from __future__ import annotations

import json
import logging
import re
import sys

from farm.logs import JsonFormatter
from farm.pools.exits import EXIT_CAUSES
from farm.pools.metrics import POOL_STATES
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


def kept_labels(expr: str) -> set[str] | None:
    """The labels a dashboard query's series keep: its outermost aggregation's ``by``
    labels, or None (every label of the series read, ``instance`` among them)."""
    expr = expr.strip()
    inner = re.fullmatch(r"histogram_quantile\(\s*[\d.]+\s*,(.*)\)", expr, flags=re.DOTALL)
    if inner:
        return kept_labels(inner[1])
    aggregation = re.match(r"(?:sum|min|max|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(", expr)
    if aggregation:
        return {label.strip() for label in (aggregation[1] or "").split(",") if label.strip()}
    return None


def test_kept_labels_reads_the_outermost_aggregation() -> None:
    assert kept_labels("rate(farm_server_sent_bytes_total[1m])") is None
    assert kept_labels("sum by (pool, cause) (increase(x[1h]))") == {"pool", "cause"}
    assert kept_labels("min(farm_server_up)") == set()
    assert kept_labels("histogram_quantile(0.99, sum by (instance, le) (rate(b[1m])))") == {
        "instance",
        "le",
    }


def test_each_grafana_legend_names_what_tells_its_series_apart() -> None:
    # With several hosts selected, "in"/"out" and "pool#slot" were drawn once per host under
    # one name: the hosts' lines could not be told apart.
    dashboard = json.loads((ROOT / "docs" / "grafana-farm.json").read_text())
    unnamed = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            kept = kept_labels(target["expr"])
            needed = {"instance"} if kept is None else kept - {"le"}
            legend = target.get("legendFormat", "")
            missing = sorted(label for label in needed if "{{" + label + "}}" not in legend)
            if missing:
                unnamed.append((panel["title"], target["refId"], missing))
    assert not unnamed


def test_the_alert_rules_read_only_documented_metrics_and_the_docs_name_them() -> None:
    text = (ROOT / "docs" / "farm-alerts.yml").read_text()
    used = {family(name) for name in re.findall(r"farm_\w+", text)}
    assert used and used <= documented()
    for doc in ("monitoring.md", "operations.md"):
        assert "farm-alerts.yml" in (ROOT / "docs" / doc).read_text(), doc


def test_the_other_pages_name_only_documented_metrics() -> None:
    # docs/operations.md and docs/server.md name metrics in their prose
    # (`farm_store_commit_seconds`, `farm_jobs_refused_total{reason="max_functions"}`).
    named = {
        family(name)
        for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
        for name in re.findall(r"\bfarm_[a-z_]+[a-z]", doc.read_text())
    }
    assert named
    assert not named - documented()


def test_the_instance_list_holds_every_kind_of_farm_target() -> None:
    # It read farm_server_up, which `farm up` serves only with a server of its own: the
    # hosts whose workers serve remote job servers, and a lone `farm server --metrics`,
    # were missing from it. A family each kind of endpoint always serves:
    dashboard = json.loads((ROOT / "docs" / "grafana-farm.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    names = set(re.findall(r"farm_\w+", variable["query"]["query"]))
    assert variable["definition"] == variable["query"]["query"]
    assert "farm_pool_target_workers" in names  # every farm up, whatever its servers
    assert "farm_server_start_time_seconds" in names  # every job server of farm's


def test_every_field_of_a_json_log_line_is_in_the_table() -> None:
    # A record logged with stack_info=True carried `stack_info`, which the table left out.
    page = (ROOT / "docs" / "monitoring.md").read_text()
    text = page[page.index("## JSON logs") :]
    table = text[text.index("| field | meaning |") :].split("\n\n", 1)[0]
    documented = {
        f
        for first in re.findall(r"^\| (.*?) \|", table, re.M)
        for f in re.findall(r"`(\w+)`", first)
    }
    try:
        raise ValueError("bad image")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("farm.worker", logging.ERROR, __file__, 1, "m", None, exc_info)
    record.__dict__.update(job="H:host:17", stack_info="Stack (most recent call last): ...")
    fields = json.loads(JsonFormatter("worker", slot=3, function="resize").format(record))
    assert set(fields) == documented


def test_the_alerts_table_names_each_rule_of_the_file_with_its_severity() -> None:
    rules = (ROOT / "docs" / "farm-alerts.yml").read_text()
    in_file = dict(re.findall(r"- alert: (\w+)\n(?:.*\n)*?\s+severity: (\w+)", rules))
    text = (ROOT / "docs" / "monitoring.md").read_text()
    in_table = dict(re.findall(r"^\| `(Farm\w+)` \|.*\| (\w+) \|$", text, re.M))
    assert len(in_file) >= 8
    assert in_table == in_file


def row(metric: str) -> str:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    (found,) = re.findall(rf"^\| `{metric}\{{[^\n]*", text, re.M)
    return found


def test_the_states_and_causes_the_table_lists_are_those_the_supervisor_serves() -> None:
    states = set(re.findall(r"`(\w+)`", row("farm_pool_processes").split("|")[3]))
    assert states == set(POOL_STATES)
    causes = set(re.findall(r"`(\w+)` \(", row("farm_pool_restarts_total").split("|")[3]))
    assert causes == set(EXIT_CAUSES)


def test_the_submits_the_page_names_are_ones_the_server_takes() -> None:
    # The scheduled gauge was said to count SUBMIT_JOB_SCHED jobs, which farm's server
    # refuses (INVALID_COMMAND, as gearmand 1.1 does): a reader took it for supported.
    from farm.protocol import PacketType as T
    from farm.protocol.kinds import SUBMIT_KINDS

    taken = {t.name for t in SUBMIT_KINDS}
    taken |= {"SUBMIT_JOB_EPOCH", "SUBMIT_REDUCE_JOB", "SUBMIT_REDUCE_JOB_BACKGROUND"}
    text = (ROOT / "docs" / "monitoring.md").read_text()
    text = text.replace("farm refuses `SUBMIT_JOB_SCHED`", "")  # said as refused: fine
    named = set(re.findall(r"\bSUBMIT_[A-Z_]+", text))
    assert named and all(name in T.__members__ for name in named)
    assert named <= taken, sorted(named - taken)
