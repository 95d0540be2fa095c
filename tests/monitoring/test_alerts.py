"""docs/farm-alerts.yml, the alerting rules farm ships: Prometheus' own promtool checks
them and runs their unit tests (tests/monitoring/farm-alerts-test.yml), in which each
alert fires for the series that should fire it and stays quiet for one that should not."""

from __future__ import annotations

import re
import subprocess

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
