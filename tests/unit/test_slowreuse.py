"""A slow metrics answer is reused by one rule (farm.slowreuse), in the server's exposition
and in the supervisor's endpoint alike: changing it in its home changes both."""

from __future__ import annotations

import ast
from typing import Any

import pytest

import farm.pools.metricsapp as pool_metrics
import farm.server.exposition as server_exposition
import farm.slowreuse as slowreuse
from farm.server.hub import Hub
from farm.server.options import parse_args
from tests.helpers import ROOT


def test_a_slow_answer_is_reused_for_reuse_factor_times_what_it_took() -> None:
    took = 0.5
    assert slowreuse.reuse_until(100.0, took) == 100.0 + took + slowreuse.REUSE_FACTOR * took


def test_reuse_factor_is_written_once() -> None:
    homes = []
    for path in sorted((ROOT / "farm").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "REUSE_FACTOR" for t in targets):
                homes.append(str(path.relative_to(ROOT)))
    assert homes == ["farm/slowreuse.py"]


@pytest.mark.parametrize("factor", [0, 10**9])
def test_the_supervisors_endpoint_reuses_by_the_shared_rule(
    monkeypatch: pytest.MonkeyPatch, factor: int
) -> None:
    monkeypatch.setattr(pool_metrics, "SLOW_SCRAPE", -1.0)  # every answer counts as slow
    monkeypatch.setattr(slowreuse, "REUSE_FACTOR", factor)
    made: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        made.append(1)
        start_response("200 OK", [])
        return [str(len(made)).encode()]

    served = pool_metrics.reused_when_slow(app)
    environ = {"PATH_INFO": "/metrics"}
    bodies = [b"".join(served(environ, lambda *a: None)) for _ in range(2)]
    # factor 0: the next scrape begins after the first one's end, so it is made afresh.
    assert bodies == ([b"1", b"1"] if factor else [b"1", b"2"])


@pytest.mark.parametrize("factor", [0, 10**9])
def test_the_servers_exposition_reuses_by_the_shared_rule(
    monkeypatch: pytest.MonkeyPatch, factor: int
) -> None:
    monkeypatch.setattr(server_exposition, "SLOW_EXPOSITION", -1.0)
    monkeypatch.setattr(slowreuse, "REUSE_FACTOR", factor)
    hub = Hub(parse_args(["--store", "none"]))
    first = server_exposition.exposition(hub)
    hub.jobs.function(b"a").stats.submitted[1] = 5
    again = server_exposition.exposition(hub)
    assert (again == first) == bool(factor)
