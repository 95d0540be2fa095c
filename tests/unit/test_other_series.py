"""``function="other"`` in the server's metrics only grows (farm.server.exposition).

Functions pass through ``other``: a name nobody serves is summed there until a worker
registers it (then it has its own series), and an idle entry may be freed. Its counters
and histograms must not drop when one leaves: Prometheus reads a drop as a reset and
counts the rest again. The real server's path is in tests/monitoring/test_server_metrics.py.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.server.exposition import MAX_LABELLED, exposition
from farm.server.hub import Hub
from farm.server.jobs import MAX_IDLE_FUNCTIONS, QueueFull
from farm.server.metrics import BYTES
from farm.server.options import parse_args
from farm.server.queues import SERVED_OVER_TCP
from tests.helpers.fakes import FakePeer


def scrape(hub: Hub) -> dict[tuple[str, str, str], float]:
    """(sample name, function, priority or "") -> value."""
    out = {}
    for family in text_string_to_metric_families(exposition(hub).decode()):
        for s in family.samples:
            if "function" in s.labels and "le" not in s.labels:
                out[(s.name, s.labels["function"], s.labels.get("priority", ""))] = s.value
    return out


def test_other_keeps_what_a_function_counted_there_after_it_leaves() -> None:
    hub = Hub(parse_args(["--store", "none"]))
    a, b = hub.jobs.function(b"a"), hub.jobs.function(b"b")
    a.stats.submitted[1] = 5
    a.stats.wait.observe(0.002)
    b.stats.submitted[1] = 2
    assert scrape(hub)[("farm_jobs_submitted_total", "other", "normal")] == 7

    # a is labelled by name from now on: what it counted up to the scrape that shows its
    # name stays in other (the scrape is when its label changes).
    a.served = SERVED_OVER_TCP
    a.stats.submitted[1] = 6
    after = scrape(hub)
    assert after[("farm_jobs_submitted_total", "a", "normal")] == 6
    assert after[("farm_jobs_submitted_total", "other", "normal")] == 8
    assert after[("farm_job_queue_wait_seconds_count", "other", "")] == 1
    assert after[("farm_job_queue_wait_seconds_sum", "other", "")] == 0.002

    # b counts on in other, then its idle entry is freed (the oldest idle one, once more
    # than MAX_IDLE_FUNCTIONS are idle): what it counted stays, up to its last count.
    b.stats.submitted[1] = 3
    assert scrape(hub)[("farm_jobs_submitted_total", "other", "normal")] == 9
    b.stats.submitted[1] = 4
    hub.jobs.note_unused(b"b")
    for n in range(MAX_IDLE_FUNCTIONS):
        hub.jobs.function(b"idle-%d" % n)
        hub.jobs.note_unused(b"idle-%d" % n)
    assert b"b" not in hub.jobs.functions
    hub.jobs.function(b"c").stats.submitted[2] = 4
    last = scrape(hub)
    assert last[("farm_jobs_submitted_total", "other", "normal")] == 10
    assert last[("farm_jobs_submitted_total", "other", "low")] == 4


def test_other_stays_once_it_was_there() -> None:
    """A series that vanished and came back lower would be a reset too."""
    hub = Hub(parse_args(["--store", "none"]))
    fq = hub.jobs.function(b"a")
    fq.stats.completed[0] = 3
    assert scrape(hub)[("farm_jobs_completed_total", "other", "high")] == 3
    fq.served = SERVED_OVER_TCP  # the only function: nothing is summed in other now
    after = scrape(hub)
    assert after[("farm_jobs_completed_total", "other", "high")] == 3
    assert after[("farm_jobs_queued", "other", "high")] == 0


def test_no_other_until_a_function_is_summed_there() -> None:
    hub = Hub(parse_args(["--store", "none"]))
    hub.jobs.function(b"a").served = SERVED_OVER_TCP
    assert not [key for key in scrape(hub) if key[1] == "other"]


def test_other_keeps_the_refusals_of_a_function_that_leaves_it() -> None:
    hub = Hub(parse_args(["--store", "none"]))
    fq = hub.jobs.function(b"a")
    fq.stats.refused[BYTES][2] = 2
    refused = [
        s
        for family in text_string_to_metric_families(exposition(hub).decode())
        for s in family.samples
        if s.name == "farm_jobs_refused_total"
    ]
    assert {(s.labels["reason"], s.labels["priority"]): s.value for s in refused if s.value} == {
        ("bytes", "low"): 2
    }
    fq.served = SERVED_OVER_TCP  # a's own series from now on, starting from what it counted
    for _ in range(2):  # and other keeps what a counted there, scrape after scrape
        after = {
            (s.labels["function"], s.labels["reason"], s.labels["priority"]): s.value
            for family in text_string_to_metric_families(exposition(hub).decode())
            for s in family.samples
            if s.name == "farm_jobs_refused_total" and s.value
        }
        assert after == {("other", "bytes", "low"): 2, ("a", "bytes", "low"): 2}


def test_refusals_of_names_freed_before_any_scrape_stay_counted_in_other() -> None:
    # A submit refused for --max-queued-bytes leaves the new name it made idle, freed in its
    # turn (farm.server.functable); freed before a scrape had summed it in other, what it
    # counted was in no series: a flood of refused submits to new names read as at most
    # MAX_IDLE_FUNCTIONS of them.
    hub = Hub(parse_args(["--store", "none", "--max-queued-bytes", "2048"]))
    hub.jobs.submit(None, b"filler", b"", b"z" * 1200, background=True)
    flood = MAX_IDLE_FUNCTIONS + 100
    for i in range(flood):
        with pytest.raises(QueueFull):
            hub.jobs.submit(None, b"fresh%d" % i, b"", b"x", background=True)
    refused = sum(
        s.value
        for family in text_string_to_metric_families(exposition(hub).decode())
        for s in family.samples
        if s.name == "farm_jobs_refused_total" and s.labels["reason"] == "bytes"
    )
    assert refused == flood


def submitted(hub: Hub) -> dict[str, float]:
    """function -> its jobs submitted, all priorities; a scrape of its own, never the last
    one's text again (a slow one's is reused: SLOW_EXPOSITION)."""
    hub.last_exposition = None
    out: dict[str, float] = {}
    for (name, function, _), value in scrape(hub).items():
        if name == "farm_jobs_submitted_total":
            out[function] = out.get(function, 0) + value
    return out


def test_a_served_function_past_the_labelled_ones_freed_before_a_scrape_stays_in_other() -> None:
    # Past MAX_LABELLED served functions, a served one is summed under other; freed before
    # any scrape had summed it there, what it counted went nowhere (freeing looked at
    # whether a worker had served it, not at where a scrape would show it).
    hub = Hub(parse_args(["--store", "none"]))
    jobs = hub.jobs
    keep = FakePeer()
    keep.tcp = True
    for i in range(MAX_LABELLED):
        jobs.can_do(keep, b"pool%d" % i)
    worker = FakePeer()
    worker.tcp = True
    jobs.can_do(worker, b"extra")  # served, but past MAX_LABELLED: summed under other
    jobs.submit(None, b"extra", b"", b"x", background=True)
    assert jobs.cancel(next(iter(jobs.jobs)))
    jobs.detach_worker(worker)  # idle now
    assert jobs.room_for_new(len(jobs.functions)), "a new name past --max-functions frees it"
    assert b"extra" not in jobs.functions
    assert {f: n for f, n in submitted(hub).items() if n} == {"other": 1}


def test_a_labelled_function_freed_leaves_other_as_it_was() -> None:
    # Shown under its own name, what it counted is in that series: other must not take it
    # too when its entry is freed.
    hub = Hub(parse_args(["--store", "none"]))
    jobs = hub.jobs
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    jobs.submit(None, b"f", b"", b"x", background=True)
    assert submitted(hub) == {"f": 1}
    assert jobs.cancel(next(iter(jobs.jobs)))
    jobs.detach_worker(worker)
    assert jobs.room_for_new(1) and b"f" not in jobs.functions
    assert submitted(hub) == {}


def test_drop_function_before_any_scrape_keeps_its_counts_in_other() -> None:
    # The admin's `drop function` frees the entry by the rule idle ones are freed by:
    # a name no scrape showed by name leaves what it counted to other.
    hub = Hub(parse_args(["--store", "none"]))
    hub.jobs.submit(None, b"f", b"", b"x", background=True)
    assert hub.jobs.drop_function(b"f")
    assert submitted(hub) == {"other": 1}
