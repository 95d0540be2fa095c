"""The supervisor's warning of a job server that runs but does not answer the scrapes
(farm.pools.metrics.SupervisorCollector._silent): once per silence, and only for failed
scrapes close enough together to be one silence."""

from __future__ import annotations

import logging

import pytest

from farm.pools import metrics
from farm.pools.metrics import SILENCE_GAP, SILENCE_WARNING, SupervisorCollector


def test_failed_scrapes_an_hour_apart_are_no_hour_long_hang(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Two slow scrapes an hour apart, none between them, warned of a server "not answered
    # for 3600s" that had served all along.
    now = [1000.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: now[0])
    collector = SupervisorCollector(None)  # type: ignore[arg-type]  # _silent reads no supervisor
    with caplog.at_level(logging.WARNING, logger="farm.supervisor"):
        collector._silent(42, TimeoutError("timed out"))
        now[0] += SILENCE_GAP + 3600
        collector._silent(42, TimeoutError("timed out"))
        assert "has not answered" not in caplog.text
        now[0] += 60  # a minute later, the next scrape (Prometheus' default interval) fails
        collector._silent(42, TimeoutError("timed out"))
        assert caplog.text.count("has not answered for 60s") == 1, caplog.text
        now[0] += SILENCE_WARNING
        collector._silent(42, TimeoutError("timed out"))  # once per silence
        assert caplog.text.count("has not answered") == 1, caplog.text
