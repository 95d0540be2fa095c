"""What the supervisor's metrics endpoint serves (farm.pools.metricsendpoint is the HTTP
server): prometheus_client's WSGI app at ``/metrics`` alone, as the job server's endpoint
answers (farm.server.metricshttp); its ``?name[]=`` filter made to work
(``NamesFiltered``); and slow responses reused (``reused_when_slow``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from farm import slowreuse

__all__ = [
    "MAX_KEPT",
    "SLOW_AHEAD",
    "SLOW_SCRAPE",
    "NamesFiltered",
    "only_metrics",
    "reused_when_slow",
]

#: A response that took more than SLOW_SCRAPE seconds of the supervisor's CPU to make is
#: served again, as it was, for a while (farm.slowreuse: REUSE_FACTOR times as long as it
#: took; the job server reuses its part by the same rule, see farm.server.exposition). Any
#: local user may make the server hold functions whose 256 labelled names are 512 bytes
#: long: its part of a scrape was then 10 MB, which took the supervisor 9 s of CPU to
#: parse, and four threads scraping in a loop kept it parsing. (A farm's own scrape takes
#: milliseconds: such scrapes are made afresh each time, as Prometheus expects.) CPU, not
#: the clock: a scrape that waited 2 s on a stalled server (SERVER_TIMEOUT) cost nothing,
#: and served again it said farm_server_up 0 for 22 s after the server answered again.
SLOW_SCRAPE = 1.0


#: Slow responses kept for reuse at most, the least recently served dropped first: a
#: request's path, query and Accept header are the asker's to choose, and each new one kept
#: a 10 MB body (47 MB with names that are not UTF-8), for ever.
MAX_KEPT = 4
#: CPU seconds of slow responses that may be made ahead of their share of the supervisor's time
#: (1 / (1 + REUSE_FACTOR), as reuse gives one asker): past it, a request with no response
#: kept for it gets 503, and one with an expired response gets that response again.
#: Otherwise a request that changed its query string each time (``?1``, ``?2``) was made
#: afresh each time, 9 s of CPU apiece, as if nothing were reused.
SLOW_AHEAD = 10.0


def only_metrics(app: Any) -> Any:
    """``app`` at ``/metrics`` alone; any other path a 404, as the job server answers.
    prometheus_client serves its page at every path, so a mistyped scrape path (``/metric``,
    ``/``) read as a healthy target. (Its own method rule stays: GET and OPTIONS.)"""

    def serve(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)  # type: ignore[no-any-return]
        body = b"see /metrics\n"
        start_response(
            "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return serve


class NamesFiltered:
    """``registry`` as make_wsgi_app is given it, with a ``?name[]=`` filter that works:
    the samples of those names, collected in full and then picked out.

    prometheus_client's own filter (``restricted_registry``) asks each collector which
    names it makes (describe(), or a whole collect() under auto_describe) and collects only
    those that say so. SupervisorCollector cannot say so cheaply: the server's families are
    whatever its exposition holds at the scrape, so the filter found no collector and every
    filtered scrape was 200 with an empty body (a Prometheus job with ``params: name[]``
    read up=1 and no series, each alert silent). A name is a sample's, as prometheus_client
    matches it: ``farm_jobs_submitted_total``, ``farm_job_run_seconds_bucket``."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        return iter(self.registry.collect())

    def restricted_registry(self, names: Iterable[str]) -> Any:
        return _Only(frozenset(names), self.registry)


class _Only:
    """What NamesFiltered.restricted_registry gives: ``names``' samples alone, each family
    that has none of them left out (as prometheus_client's filter leaves it)."""

    def __init__(self, names: frozenset[str], registry: Any) -> None:
        self.names, self.registry = names, registry

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        for family in self.registry.collect():
            samples = [s for s in family.samples if s.name in self.names]
            if samples:
                only = Metric(family.name, family.documentation, family.type, family.unit)
                only.samples = samples
                yield only


#: A response as it is kept: until when it is served again, its status, headers and body.
Kept = tuple[float, str, list[tuple[str, str]], bytes]


def reused_when_slow(
    app: Any,
    prepare: Callable[[dict[str, Any]], AbstractContextManager[Any]] = lambda environ: (
        nullcontext()
    ),
) -> Any:
    """``app`` (a WSGI app) whose slow responses are reused (see SLOW_SCRAPE, MAX_KEPT,
    SLOW_AHEAD): one made at a time, and the scrapes that come meanwhile wait for it rather
    than make their own. ``prepare(environ)`` is entered around the making of a response, before
    that one-at-a-time lock: what waits without costing CPU (the job server's part,
    SupervisorCollector.server_part) is waited for there, not in a queue behind the lock."""
    from prometheus_client.exposition import gzip_accepted

    making = threading.Lock()
    made: dict[tuple[Any, ...], Kept] = {}
    owed = [0.0, time.monotonic()]  # seconds of slow responses not paid down yet, and when

    def reused(key: tuple[Any, ...]) -> Kept | None:
        """The response kept for ``key`` or a 503, if that is what it gets; None: make one.
        Called under ``making``."""
        started = time.monotonic()
        share = 1 / (1 + slowreuse.REUSE_FACTOR)
        owed[:] = [max(0.0, owed[0] - (started - owed[1]) * share), started]
        kept = made.pop(key, None)
        if kept is not None and (started < kept[0] or owed[0] > SLOW_AHEAD):
            made[key] = kept  # the most recently served last
            return kept
        if owed[0] > SLOW_AHEAD:
            wait = [("Retry-After", f"{owed[0] / share:.0f}")]
            return (
                0.0,
                "503 Service Unavailable",
                wait,
                b"slow metrics were made lately; try again later\n",
            )
        return None

    def make(environ: dict[str, Any], key: tuple[Any, ...]) -> Kept:
        """A response made afresh, kept if it was slow to make. Called under ``making``."""
        answer: list[Any] = []

        def start(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            answer[:] = [status, headers]
            return lambda data: None  # the app returns its body; it writes nothing

        # This thread's CPU (the collector and prometheus_client run in it): the
        # time spent waiting on the job server is not the supervisor's to save.
        started, cpu = time.monotonic(), time.thread_time()
        body = b"".join(app(environ, start))
        took = time.thread_time() - cpu
        kept = (slowreuse.reuse_until(started, took), answer[0], answer[1], body)
        if took > SLOW_SCRAPE:
            owed[0] += took
            made[key] = kept
            while len(made) > MAX_KEPT:
                del made[next(iter(made))]
        return kept

    def reusing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # What the response depends on: the path, the query (name[] filters), the format the
        # scraper accepts (OpenMetrics or Prometheus' text) and whether it takes gzip.
        key = (
            *(environ.get(k, "") for k in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING")),
            environ.get("HTTP_ACCEPT", ""),
            gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")),
        )
        with making:
            kept = reused(key)
        if kept is None:  # asked again once prepared: another may have made it meanwhile
            with prepare(environ), making:
                kept = reused(key) or make(environ, key)
        start_response(kept[1], kept[2])
        return [kept[3]]

    return reusing
