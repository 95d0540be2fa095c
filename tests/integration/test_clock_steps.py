"""The server's wall clock stepped under it (NTP, a resume from suspend), its monotonic
clock not: scheduled (SUBMIT_JOB_EPOCH) jobs run by the wall clock, as gearmand's do."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import farm
from tests.helpers.scraping import fresh_metrics, get
from tests.helpers.serving import serving
from tests.helpers.steppedclock import stepped_server


def test_a_scheduled_job_runs_when_a_forward_step_of_the_clock_makes_it_due(
    tmp_path: Path,
) -> None:
    """Its timer was armed for the hour the wall clock then skipped: it ran an hour late
    (the monotonic clock's hour), where its epoch said at once."""
    ran = threading.Event()
    with stepped_server(tmp_path) as farm_server:
        addr = farm_server.server.addr
        with farm.Client(addr) as c, serving(addr, {"later": lambda job: ran.set()}):
            c.submit("later", b"", when=time.time() + 3600)
            assert not ran.wait(1.5)  # held for its time
            farm_server.step(3600)
            assert ran.wait(10), "a job due by the server's clock did not run"


def test_the_server_uptime_gauge_does_not_follow_steps_of_the_clock(tmp_path: Path) -> None:
    """farm_server_uptime_seconds read time() less the start's time(): an hour back made it
    -3599 s, an hour on counted the hour that never passed."""
    with stepped_server(tmp_path) as farm_server:
        addr = farm_server.server.addr
        began = time.monotonic()
        for step in (-3600, 7200):
            farm_server.step(step)
            text = fresh_metrics(addr)
            samples = {
                (s.name, ()): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            uptime = get(samples, "farm_server_uptime_seconds")
            assert 0 <= uptime <= time.monotonic() - began + 30, f"uptime {uptime}s after {step}s"
