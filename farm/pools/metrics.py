"""What the farm's one metrics endpoint serves: the supervisor's collector (the endpoint,
an HTTP server, is farm.pools.metricsendpoint's; ``[supervisor] metrics``).

``farm up`` answers ``GET /metrics`` on 127.0.0.1:9730 by default with:

* its own numbers: processes per pool by state, target sizes, restarts by
  cause, and for each slot's worker its CPU seconds, RSS and pinned core
  (psutil, read at scrape time);
* the job server's numbers, which the collector asks the server for over
  the admin protocol (the farm-only command ``metrics``, on the Unix socket
  when there is one) and passes on unchanged.

So Prometheus has one target per farm. The supervisor asks the server at
scrape time rather than keeping a copy: a scrape always sees the server's
current counts, and a server that restarts shows up as a counter reset, as
Prometheus expects. The server does not need an HTTP port of its own. A
server that does not answer costs the scrape its server part only;
``farm_server_up`` says so, and scrapes that come while one waits on the server
share its request (``server_part``) rather than queue behind it.

The collector runs in the endpoint's threads (farm.pools.metricsendpoint). It
only reads the supervisor's state: it copies each list before walking it,
under the GIL, and never changes anything. A worker's state and jobs done it
reads from the worker's record (shared memory) as `farm ps` does, not from what
the supervisor's loop last read of it, up to a second before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psutil

from farm.pools.exits import EXIT_CAUSES, Exits
from farm.pools.proctree import tree_usage
from farm.pools.slots import ProcState

#: What farm_pool_processes counts by: a process's state, or an empty slot's.
POOL_STATES = (*(str(state) for state in ProcState), "backoff", "failing")

if TYPE_CHECKING:
    from farm.pools.steering import Steering

__all__ = ["Exits", "SERVER_TIMEOUT", "SupervisorCollector", "server_wait"]

log = logging.getLogger("farm.supervisor")

#: How long a scrape waits for the job server's part.
SERVER_TIMEOUT = 2.0
#: The share of the scraper's own timeout (Prometheus sends it with each scrape:
#: X-Prometheus-Scrape-Timeout-Seconds) a scrape may wait for the server, when that is less
#: than SERVER_TIMEOUT: the rest is for the supervisor's part and the way back. Under a 1 s
#: timeout, the 2 s wait failed the whole scrape, and FarmScrapeFailing fired where
#: FarmServerDown should have.
SCRAPER_SHARE = 0.5
#: The least wait for the server, whatever the scraper's timeout says.
SERVER_TIMEOUT_MIN = 0.05


def server_wait(environ: dict[str, Any]) -> float:
    """How long this scrape (a WSGI ``environ``) may wait for the job server's part."""
    said = environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS", "")
    try:
        scraper = float(said)
    except ValueError:  # none sent (curl, farm top), or not a number: the usual wait
        return SERVER_TIMEOUT
    if not scraper > 0:  # nan, 0, negative: no word worth taking
        return SERVER_TIMEOUT
    return max(SERVER_TIMEOUT_MIN, min(SERVER_TIMEOUT, scraper * SCRAPER_SHARE))


#: How long the job server may not answer the scrapes, while it runs, before a warning.
#: Its silence was at debug only: FarmServerDown fired at a minute and pointed at the
#: journal, which said nothing of a hung server (its workers' connections stay open).
SILENCE_WARNING = 10.0
#: Failed scrapes further apart than this are separate silences, not one (Prometheus'
#: default interval is a minute): two slow scrapes an hour apart are no hour-long hang.
SILENCE_GAP = 300.0


class SupervisorCollector:
    """Reads a running supervisor (and, through it, its server) into metric families."""

    def __init__(self, supervisor: Steering) -> None:
        self.supervisor = supervisor
        self._flight_lock = threading.Lock()
        self._flight: Future[str | None] | None = None  # the one request to the server
        self._fetched = threading.local()  # what server_part fetched for this thread
        # (pid, since when, last failed, warned) while the server does not answer; only
        # the thread whose request is in flight reads or writes it (_shared_fetch).
        self._silence: tuple[int, float, float, bool] | None = None

    @contextmanager
    def server_part(self, environ: dict[str, Any]) -> Iterator[None]:
        """Ask the job server for its part now, for this thread's next collect(), waiting
        no longer than the scrape (WSGI ``environ``) may (``server_wait``). The endpoint
        calls it before it takes its lock of one response made at a time: with a stalled
        server, each scrape had waited its 2 s there behind the one before (3 scrapers: 6 s,
        past `farm top`'s 5), as that wait costs no CPU and nothing was kept for reuse.
        Scrapes that ask meanwhile share the request in flight, each waiting its own wait
        at most (a request made for a shorter one ends sooner: the server is down for both)."""
        self._fetched.text = (self._shared_fetch(server_wait(environ)),)
        try:
            yield
        finally:
            del self._fetched.text

    def _shared_fetch(self, wait: float) -> str | None:
        """The server's text, or None when it did not answer within ``wait`` seconds: from
        the request in flight if there is one (its answer is as fresh as any), else from a
        new one. Never kept past it, so the first request after a stall ends sees the
        server up."""
        with self._flight_lock:
            flight, mine = self._flight, self._flight is None
            if flight is None:
                flight = self._flight = Future()
        if not mine:
            try:
                return flight.result(timeout=wait)
            except TimeoutError:  # its request may wait longer than this scraper will
                return None
        text = None
        try:
            text = self._fetch(wait)
        finally:
            with self._flight_lock:
                self._flight = None
            flight.set_result(text)
        return text

    def _fetch(self, wait: float) -> str | None:
        from farm.client.admin import server_metrics

        address = self.supervisor.server.admin_address()
        if address is None or not self.supervisor.config.local_server:
            return None
        pid = self.supervisor.server.pid
        try:
            text = server_metrics(address, timeout=wait)
        except (OSError, ValueError) as exc:
            log.debug("metrics: the job server at %s did not answer: %s", address, exc)
            self._silent(pid, exc)
            return None
        if self._silence is not None and self._silence[0] == pid and self._silence[3]:
            log.info(
                "the job server (pid %d) answers again, after %.0fs",
                pid,
                time.monotonic() - self._silence[1],
            )
        self._silence = None
        return text

    def _silent(self, pid: int, exc: Exception) -> None:
        """A warning, once, when the running server has not answered the scrapes for
        SILENCE_WARNING: a dead one's end the supervisor logs, a hung one's nothing did."""
        now, silence = time.monotonic(), self._silence
        if silence is None or silence[0] != pid or now - silence[2] > SILENCE_GAP:
            self._silence = (pid, now, now, False)
            return
        _, since, _, warned = silence
        self._silence = (pid, since, now, warned)
        if warned or now - since < SILENCE_WARNING:
            return
        self._silence = (pid, since, now, True)
        log.warning(
            "the job server (pid %d) has not answered for %.0fs, though it runs (last: %s): "
            "stopped or hung (farm ps shows `stopped` for the one, `ready` for the other); "
            "kill -KILL %d and it is started again, its stored jobs replayed",
            pid,
            now - since,
            exc,
            pid,
        )

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sup = self.supervisor
        states = GaugeMetricFamily(
            "farm_pool_processes", "Worker processes of a pool by state.", labels=["pool", "state"]
        )
        target = GaugeMetricFamily(
            "farm_pool_target_workers", "How many workers a pool should have.", labels=["pool"]
        )
        restarts = CounterMetricFamily(
            "farm_pool_restarts",
            "Worker processes that ended and were replaced, by cause (boot_failure: also a"
            " restart's or reload's new process that ended before it served).",
            labels=["pool", "cause"],
        )
        cpu = CounterMetricFamily(
            "farm_worker_cpu_seconds",
            "CPU time (user + system) of a slot's current worker process.",
            labels=["pool", "slot"],
        )
        rss = GaugeMetricFamily(
            "farm_worker_rss_bytes", "Resident memory of a slot's worker.", labels=["pool", "slot"]
        )
        core = GaugeMetricFamily(
            "farm_worker_core", "The CPU core a slot is pinned to.", labels=["pool", "slot"]
        )
        jobs = CounterMetricFamily(
            "farm_worker_jobs",
            "Jobs the slot's current worker process has done.",
            labels=["pool", "slot"],
        )
        live = list(sup.slots.items())  # a pool a reload removed leaves once it has drained
        pools = [pool for pool, _ in live]
        for pool, slots in live:
            # Every state from 0, as each restart cause: an alert on a state's count (no
            # idle worker left: `farm_pool_processes{state="idle"} == 0`) needs the series
            # to be there when the count is 0.
            by_state: Counter[str] = Counter(dict.fromkeys(POOL_STATES, 0))
            target.add_metric([pool], sup.targets.get(pool, 0))
            for slot in list(slots):
                labels = [pool, str(slot.index)]
                core.add_metric(labels, slot.core)
                proc = slot.proc
                if slot.successor is not None:  # `farm restart`'s, starting beside (farm ps)
                    by_state[str(slot.successor.seen_now()[0])] += 1
                if proc is None:
                    by_state["failing" if slot.failing else "backoff"] += 1
                    continue
                seen, done = proc.seen_now()  # as `farm ps` shows it, not as last ticked
                by_state[str(seen)] += 1
                jobs.add_metric(labels, done)
                try:
                    if proc.command:
                        # With what it started: a wrapper's PHP worker, `gearman -w -- rev`'s
                        # job in a child, and the children they waited for (each showed 0).
                        used, held = tree_usage(proc.pid)
                        # A counter: a helper it detached leaves the sum as its parent
                        # exits, which Prometheus would read as a reset (a false spike).
                        proc.tree_cpu = max(proc.tree_cpu, used)
                        cpu.add_metric(labels, proc.tree_cpu)
                        rss.add_metric(labels, held)
                        continue
                    process = psutil.Process(proc.pid)
                    with process.oneshot():
                        times = process.cpu_times()
                        # With the children it waited for (a job's subprocess).
                        used = times.user + times.system + times.children_user
                        cpu.add_metric(labels, used + times.children_system)
                        rss.add_metric(labels, process.memory_info().rss)
                except psutil.Error:
                    pass  # it just ended; the next scrape sees its successor
            for retiring in list(sup.retiring):
                if retiring.function == pool:
                    by_state[str(retiring.seen_now()[0])] += 1
            for state, count in sorted(by_state.items()):
                states.add_metric([pool, state], count)
        draining: Counter[tuple[str, str]] = Counter()  # of removed pools, by state
        for proc in list(sup.retiring):
            if proc.function not in pools:
                draining[proc.function, str(proc.seen_now()[0])] += 1
        for (pool, state), count in sorted(draining.items()):
            states.add_metric([pool, state], count)
        # Every cause of every pool from 0: a series that first appears at 1 has no sample
        # before it, so increase() and rate() read that first restart as nothing (the
        # dashboard's "restarts in the last hour" said 0 after a pool's first crash).
        exits = dict.fromkeys(((pool, cause) for pool in pools for cause in EXIT_CAUSES), 0)
        exits.update(list(sup.exits.items()))
        for (pool, cause), count in sorted(exits.items()):
            restarts.add_metric([pool, cause], count)
        server_restarts = CounterMetricFamily(
            "farm_server_restarts",
            "Times the supervisor restarted a job server that died.",
            value=sup.server.restarts,
        )
        yield from (states, target, restarts, cpu, rss, core, jobs, server_restarts)
        yield from self._reload()
        yield from self._server()

    def _reload(self) -> Iterator[Any]:
        """Whether the last reload applied its file (Prometheus' own two, for farm), and whether
        part of it waits for a restart."""
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "farm_config_last_reload_successful",
            "1 when the last reload (or the start) applied its config file, 0 when it"
            " refused it, or a pool it changed did not boot, and the farm kept what it ran.",
            value=1.0 if self.supervisor.reloads.ok else 0.0,
        )
        yield GaugeMetricFamily(
            "farm_config_last_reload_success_timestamp_seconds",
            "When a config file was last applied whole, at the start or a reload (Unix time).",
            value=self.supervisor.reloads.ok_at,
        )
        yield GaugeMetricFamily(
            "farm_config_restart_pending",
            "1 when the last applied config file changed [server], [supervisor] or"
            " [executor], which apply only at the farm's next start.",
            value=1.0 if self.supervisor.reloads.restart_waits else 0.0,
        )

    def _server(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.parser import text_string_to_metric_families

        if not self.supervisor.config.local_server:
            # Its workers serve remote job servers (`servers`), which are scraped on their own
            # (a farm server's --metrics): no server is this farm's to call up or down, and
            # farm_server_up 0 on every scrape kept FarmServerDown firing on every such host.
            return
        up = GaugeMetricFamily(
            "farm_server_up", "1 when the job server answered this scrape, else 0."
        )
        fetched: tuple[str | None] | None = getattr(self._fetched, "text", None)
        text = fetched[0] if fetched is not None else self._shared_fetch(SERVER_TIMEOUT)
        up.add_metric([], 1.0 if text is not None else 0.0)
        yield up
        if text is not None:
            yield from text_string_to_metric_families(text)
