"""How long a scrape waits for the job server's part: half the timeout Prometheus sends
with it, within 0.05 s and SERVER_TIMEOUT, or SERVER_TIMEOUT where none (or nonsense) is
sent."""

from __future__ import annotations

import pytest

from farm.pools.metrics import SERVER_TIMEOUT, server_wait

HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"


@pytest.mark.parametrize(
    ("sent", "wait"),
    [
        (None, SERVER_TIMEOUT),  # curl, farm top
        ("10", SERVER_TIMEOUT),  # Prometheus's default timeout: the usual wait
        ("1", 0.5),
        ("2.5", 1.25),
        ("0.01", 0.05),
        ("0", SERVER_TIMEOUT),
        ("-3", SERVER_TIMEOUT),
        ("nan", SERVER_TIMEOUT),
        ("soon", SERVER_TIMEOUT),
    ],
)
def test_the_wait_for_the_server_follows_the_scrapers_timeout(
    sent: str | None, wait: float
) -> None:
    environ = {} if sent is None else {HEADER: sent}
    assert server_wait(environ) == pytest.approx(wait)
