"""The server's metrics in Prometheus' text format: the admin command ``metrics`` and
``--metrics HOST:PORT``'s HTTP endpoint (farm.server.metricshttp serves it).

prometheus_client is imported only when someone asks for the numbers: a custom
collector reads the Hub's counters (farm.server.metrics) at scrape time, in
the server's loop, so a server nobody scrapes pays nothing for it.

Label sets stay bounded: a function is labelled by its name once a worker has
registered it (``FunctionQueue.served``, kept while its entry lives, so a pool
that is recycling keeps its series), or from the start when `farm up`'s pools serve it
(--pool-function, or the admin poolfunctions for a pool a reload added), MAX_LABELLED such
functions at most, those served on the Unix socket
first;
every other function is summed under ``function="other"``, so neither a client
inventing names nor a worker registering thousands can grow the scrape without
limit (4,096 names from one TCP worker made a 145 MB scrape that held the server
for 4 s). The counters and histograms of ``other`` only grow: a function that leaves
it (labelled by name from now on, or its entry freed) leaves what it counted there
behind, in ``Jobs.other_retired`` (``_sort_into_other``); a drop would read to
Prometheus as a counter reset, and what remained would be counted again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from farm.protocol.kinds import PRIORITY_NAMES
from farm.server.hub import Hub
from farm.server.metrics import (
    COUNTER_FIELDS,
    MAX_FUNCTIONS,
    REFUSAL_REASONS,
    FunctionStats,
    Histogram,
)
from farm.server.queues import SERVED_LOCALLY, FunctionQueue
from farm.slowreuse import reuse_until

__all__ = ["exposition", "function_label", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The label of every function no worker serves, summed (bounded label sets).
OTHER = "other"
#: Functions labelled by name at most (the oldest served first: the farm's own pools).
MAX_LABELLED = 256
#: An exposition that took longer than SLOW_EXPOSITION seconds is answered again, as it
#: was, for a while (farm.slowreuse: REUSE_FACTOR times as long as it took, the rule the
#: supervisor's endpoint shares). Any local user may make the server hold tens of
#: thousands of functions (up to --max-functions), all summed under ``other`` at each scrape:
#: 65,536 made one take 2-4 s of the loop that serves every job, and scrapes in a loop (the
#: admin command over TCP, or the supervisor's endpoint) held the Executor's calls for
#: seconds each. A farm's own exposition takes milliseconds and is never reused.
SLOW_EXPOSITION = 0.1

#: The help text of each of FunctionStats' counters (metrics.COUNTER_FIELDS).
_HELP = {
    "submitted": "Jobs submitted (a submit joining a live job of the same unique is not one).",
    "completed": "Jobs that ended with WORK_COMPLETE.",
    "failed": "Jobs that failed: WORK_FAIL, a timeout, a cancel, or out of retries.",
    "exceptions": "Jobs that ended with WORK_EXCEPTION.",
    "dropped": "Foreground jobs dropped, not run to an end: every client waiting on them left.",
    "retried": "Times a job was queued again because its worker died or let it go.",
    "timed_out": "Jobs failed because they outran their CAN_DO_TIMEOUT.",
}


class _Collector:
    """Reads a Hub at scrape time (in the server's loop thread) into metric families."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        jobs = self.hub.jobs
        groups = _by_label(jobs.functions.values())
        retired = jobs.other_retired
        _sort_into_other(groups, retired)
        labels = ["function", "priority"]
        for field in COUNTER_FIELDS:
            family = CounterMetricFamily(f"farm_jobs_{field}", _HELP[field], labels=labels)
            for name, fqs in groups:
                stats = [fq.stats for fq in fqs] + ([retired] if name == OTHER else [])
                counts = [sum(getattr(st, field)[i] for st in stats) for i in range(3)]
                for priority, count in zip(PRIORITY_NAMES, counts, strict=True):
                    family.add_metric([name, priority], count)
            yield family
        refused = CounterMetricFamily(
            "farm_jobs_refused",
            "Submits refused with QUEUE_ERROR, by reason: the function's maxqueue, the"
            " server's --max-queued-bytes, the store failing (a background job), or"
            " --max-functions (a new function's name; under function other).",
            labels=[*labels, "reason"],
        )
        for name, fqs in groups:
            stats = [fq.stats for fq in fqs] + ([retired] if name == OTHER else [])
            for r, reason in enumerate(REFUSAL_REASONS):
                if r == MAX_FUNCTIONS and name != OTHER:
                    continue  # a function the server holds is never refused for it
                for i, priority in enumerate(PRIORITY_NAMES):
                    count = sum(st.refused[r][i] for st in stats)
                    refused.add_metric([name, priority, reason], count)
        yield refused
        queued = GaugeMetricFamily(
            "farm_jobs_queued", "Jobs waiting (runnable or held for their epoch).", labels=labels
        )
        scheduled = GaugeMetricFamily(
            "farm_jobs_scheduled",
            "Jobs held for their epoch time (counted in farm_jobs_queued too).",
            labels=labels,
        )
        running = GaugeMetricFamily(
            "farm_jobs_running", "Jobs on a worker now.", labels=["function"]
        )
        workers = GaugeMetricFamily(
            "farm_workers", "Worker connections that registered the function.", labels=["function"]
        )
        wait = HistogramMetricFamily(
            "farm_job_queue_wait_seconds",
            "From submit (or requeue) to a worker taking the job.",
            labels=["function"],
        )
        run = HistogramMetricFamily(
            "farm_job_run_seconds",
            "From a worker taking the job to its answer (complete, fail or exception).",
            labels=["function"],
        )
        for name, fqs in groups:
            for index, label in enumerate(PRIORITY_NAMES):
                held = sum(fq.scheduled[index] for fq in fqs)
                queued.add_metric([name, label], sum(fq.counts[index] for fq in fqs) + held)
                scheduled.add_metric([name, label], held)
            running.add_metric([name], sum(fq.running for fq in fqs))
            workers.add_metric([name], sum(len(fq.workers) for fq in fqs))
            stats = [fq.stats for fq in fqs] + ([retired] if name == OTHER else [])
            for histogram, hists in (
                (wait, [st.wait for st in stats]),
                (run, [st.run for st in stats]),
            ):
                merged = Histogram.merged(hists)
                histogram.add_metric([name], merged.cumulative(), merged.total)
        yield from (queued, scheduled, running, workers, wait, run)
        yield from self._server()

    def _server(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        hub, stats = self.hub, self.hub.stats
        kinds = {"client": 0, "worker": 0, "admin": 0}
        for conn in hub.connections:
            kinds[conn.kind] += 1
        connections = GaugeMetricFamily(
            "farm_server_connections", "Open connections by what they did.", labels=["kind"]
        )
        for kind, count in kinds.items():
            connections.add_metric([kind], count)
        yield connections
        registrations = CounterMetricFamily(
            "farm_worker_registrations_refused",
            "CAN_DOs refused with QUEUE_ERROR (the worker does not serve the function), by"
            " reason: --max-functions or --max-tcp-abilities.",
            labels=["reason"],
        )
        for reason, count in stats.registrations_refused.items():
            registrations.add_metric([reason], count)
        yield registrations
        yield CounterMetricFamily(
            "farm_server_received_bytes", "Bytes read from connections.", value=stats.bytes_in
        )
        yield CounterMetricFamily(
            "farm_server_sent_bytes", "Bytes written to connections.", value=stats.bytes_out
        )
        yield CounterMetricFamily(
            "farm_store_commits", "Commits of the durable store.", value=stats.commits
        )
        commit = HistogramMetricFamily(
            "farm_store_commit_seconds", "How long each commit of the durable store took."
        )
        commit.add_metric([], stats.commit_time.cumulative(), stats.commit_time.total)
        yield commit
        store = hub.store
        size = 0
        if store is not None:
            for suffix in ("", "-wal"):
                try:
                    size += os.path.getsize(store.path + suffix)
                except OSError:
                    pass
        yield GaugeMetricFamily(
            "farm_store_bytes", "Size of the durable store on disk (with its WAL).", value=size
        )
        yield GaugeMetricFamily(
            "farm_server_start_time_seconds",
            "When the server started (Unix time, by the clock of then).",
            value=stats.started,
        )
        yield GaugeMetricFamily(
            "farm_server_uptime_seconds",
            "Seconds since the server started (steps of the wall clock do not move it).",
            value=time.monotonic() - stats.started_monotonic,
        )


def _by_label(functions: Iterable[FunctionQueue]) -> list[tuple[str, list[FunctionQueue]]]:
    """(label, functions) pairs: one per function a worker has served (those served on the
    Unix socket first: a TCP peer's names must not crowd the farm's pools out), then
    "other"."""
    functions = list(functions)
    named: dict[str, list[FunctionQueue]] = {}
    other: list[FunctionQueue] = []
    served = sorted(  # stable: the oldest first within each kind
        (fq for fq in functions if fq.served and fq.name != OTHER.encode()),
        key=lambda fq: fq.served != SERVED_LOCALLY,
    )
    for fq in served:
        label = function_label(fq.name)
        if label in named:
            named[label].append(fq)
        elif len(named) < MAX_LABELLED:
            named[label] = [fq]
        else:
            other.append(fq)
    other += [fq for fq in functions if not fq.served or fq.name == OTHER.encode()]
    if other:
        named[OTHER] = other
    return list(named.items())


def function_label(name: bytes) -> str:
    """A function's ``function`` label: a label is UTF-8 and a name is bytes, so each byte
    that breaks UTF-8 is written ``\\xNN`` (b"caf\\xe9" is ``caf\\xe9``, as the log writes
    it), and a backslash of the name's own ``\\x5c``, so that no two names share a label:
    the ASCII name ``caf\\xe9`` is ``caf\\x5cxe9``. Left as it was, it and b"caf\\xe9" were
    one label and their counts were added; "replace" had made b"caf\\xe9" and b"caf\\xef" one
    (two series of one label in a scrape, of which Prometheus keeps one)."""
    return name.replace(b"\\", b"\\x5c").decode("utf-8", "backslashreplace")


def _sort_into_other(groups: list[tuple[str, list[FunctionQueue]]], retired: FunctionStats) -> None:
    """Mark which functions this scrape sums under ``other`` (``FunctionQueue.in_other``);
    one that was there and is labelled by name now leaves its counts to ``retired`` (as
    ``FunctionTable.free_entry`` does for one it frees that no scrape labelled), so that
    ``other`` never drops.
    ``other`` is added to ``groups`` once ``retired`` holds anything: its series stays."""
    for name, fqs in groups:
        inside = name == OTHER
        for fq in fqs:
            if fq.in_other and not inside:
                retired.absorb(fq.stats)
            fq.in_other, fq.labelled = inside, not inside
    if retired.counted() and OTHER not in dict(groups):
        groups.append((OTHER, []))


def exposition(hub: Hub) -> bytes:
    """The server's metrics in Prometheus' text format (prometheus_client writes it); a slow
    one's text again while it may be reused (see SLOW_EXPOSITION)."""
    from prometheus_client import CollectorRegistry, generate_latest

    started = time.monotonic()
    if hub.last_exposition is not None and started < hub.last_exposition[0]:
        return hub.last_exposition[1]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(hub))
    text = generate_latest(registry)
    took = time.monotonic() - started
    slow = took > SLOW_EXPOSITION
    hub.last_exposition = (reuse_until(started, took), text) if slow else None
    return text
