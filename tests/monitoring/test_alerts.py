"""docs/farm-alerts.yml, the alerting rules farm ships: Prometheus' own promtool checks
them and runs their unit tests (tests/monitoring/farm-alerts-test.yml), in which each
alert fires for the series that should fire it and stays quiet for one that should not."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.servers import need

RULES = ROOT / "docs" / "farm-alerts.yml"
CASES = ROOT / "tests" / "monitoring" / "farm-alerts-test.yml"

pytestmark = pytest.mark.timeout(60)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), *args], capture_output=True, text=True, cwd=ROOT, timeout=50
    )


def test_promtool_accepts_the_rules() -> None:
    run = promtool("check", "rules", str(RULES))
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_rules_unit_tests_pass() -> None:
    run = promtool("test", "rules", str(CASES))
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), flags=re.MULTILINE))
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in CASES.read_text().split("- eval_time:")[1:]:
        name = re.search(r"alertname: (\w+)", case)
        assert name, case
        (quiet if re.search(r"exp_alerts: \[\]", case) else fires).add(name[1])
    assert alerts and fires == alerts and quiet == alerts


def test_the_queries_and_prometheus_config_docs_show_are_valid(tmp_path: Path) -> None:
    # docs/monitoring.md's PromQL and prometheus.yml are read, not run, by test_docs: a
    # renamed metric was caught (test_monitoring_docs), a query that no longer parses was not.
    text = (ROOT / "docs" / "monitoring.md").read_text()
    queries = re.findall(r"^```promql\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    queries += [q for q in re.findall(r"`([^`]+)`", prose) if "(" in q and "farm_" in q]
    assert len(queries) >= 7
    rules = "groups:\n- name: docs\n  rules:\n" + "".join(
        f"  - record: docs:query{i}\n    expr: {json.dumps(' '.join(q.split()))}\n"
        for i, q in enumerate(queries)
    )
    (tmp_path / "queries.yml").write_text(rules)
    run = promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert run.returncode == 0, run.stdout + run.stderr

    configs = re.findall(r"^```yaml\n# prometheus.yml\n(.*?)^```", text, re.M | re.S)
    assert len(configs) == 2  # the scrape config, then the rules file it loads
    shutil.copy(RULES, tmp_path / "farm-alerts.yml")
    (tmp_path / "prometheus.yml").write_text("".join(configs))
    run = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_alerts_table_names_each_rule() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    table = set(re.findall(r"^\| `(Farm\w+)` \|", text, flags=re.MULTILINE))
    assert table == set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), flags=re.M))
