"""The supervisor's metrics endpoint as an HTTP server (``[supervisor] metrics``): its
bounds against other local users (scrapes served at once, silent connections dropped, slow
responses reused), and its [::1] twin (farm.loopback). What it serves is
farm.pools.metrics.SupervisorCollector's."""

from __future__ import annotations

import errno
import functools
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from farm import slowreuse
from farm.logrepeats import Brief
from farm.loopback import (
    HOLDS_IPV6_LOOPBACK,
    NO_IPV6,
    another_users_listener,
    serve_twin,
    taken_hint,
    twin_needed,
)
from farm.net import Address
from farm.pools.metrics import SupervisorCollector
from farm.slowreuse import EVICT_AFTER, MAX_SCRAPERS, SCRAPE_TIMEOUT

if TYPE_CHECKING:
    from farm.pools.steering import Steering

__all__ = ["NamesFiltered", "reused_when_slow", "serve_metrics"]

log = logging.getLogger("farm.supervisor")

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
#: How long the listener rests after accept() failed (no descriptor left): the connection
#: stays queued, and a listener selected again at once spins.
ACCEPT_PAUSE = 1.0
cannot_accept = Brief(log, every=60.0)
#: What a scrape imports (farm.pools.metrics, _Only, prometheus_client's own), imported as
#: the endpoint starts: an import opens its file, and at the descriptor limit that failed
#: the scrape with a 500 naming prometheus_client/core.py.
SCRAPE_IMPORTS = (
    "prometheus_client.core",
    "prometheus_client.metrics_core",
    "prometheus_client.parser",
    "prometheus_client.openmetrics.exposition",
    "farm.client.admin",
)


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
    app: Any, prepare: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> Any:
    """``app`` (a WSGI app) whose slow responses are reused (see SLOW_SCRAPE, MAX_KEPT,
    SLOW_AHEAD): one made at a time, and the scrapes that come meanwhile wait for it rather
    than make their own. ``prepare()`` is entered around the making of a response, before
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
            with prepare(), making:
                kept = reused(key) or make(environ, key)
        start_response(kept[1], kept[2])
        return [kept[3]]

    return reusing


def serve_metrics(supervisor: Steering, address: str) -> Any:
    """Start the HTTP endpoint on ``address`` (HOST:PORT); the server object, to shut down.

    prometheus_client's own server gives every connection a thread with no timeout, so
    idle connections (from any local user) would pile up threads in the supervisor; this
    one serves at most MAX_SCRAPERS at once, drops a client silent for SCRAPE_TIMEOUT, and
    when it is full lets a new connection take the place of the oldest one still sending
    its request, else of the oldest one older than EVICT_AFTER (see MAX_SCRAPERS)."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app

    class Handler(WSGIRequestHandler):
        timeout = SCRAPE_TIMEOUT  # the socket's timeout, for the request and the reply
        server: Server

        def parse_request(self) -> bool:
            whole = super().parse_request()
            self.server.request_read(self.request)  # no longer the first to be evicted
            return whole

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape a second is no news

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        # Its other addresses' servers (localhost's others, the [::1] twin: farm.loopback),
        # stopped with it; MAX_SCRAPERS shared by all of them (the class's own bounds).
        others: list[Any] = []
        request_queue_size = 2 * MAX_SCRAPERS  # socketserver's 5 drops a burst's SYNs
        slots = threading.BoundedSemaphore(MAX_SCRAPERS)
        lock = threading.Lock()
        started: dict[Any, float] = {}  # connection -> when it was taken in
        reading: dict[Any, float] = {}  # those whose request has not all come yet
        stopping = threading.Event()

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                # Full: make room (evict_oldest: one still sending its request, else one
                # over EVICT_AFTER, as a scrape takes a second at most; one byte every few
                # seconds beats any read timeout).
                self.evict_oldest()
                if not self.slots.acquire(timeout=0.25):  # the evicted one ends in ms
                    self.shutdown_request(request)
                    return
            with self.lock:
                self.started[request] = self.reading[request] = time.monotonic()
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.forget(request)
                raise

        def request_read(self, request: Any) -> None:
            with self.lock:
                self.reading.pop(request, None)

        def evict_oldest(self) -> None:
            # One still sending its request goes first, however young: Prometheus sends
            # its request as it connects, a user holding places never finishes one (and one
            # reopening them faster than once a second kept every scrape out by age alone).
            with self.lock:
                oldest = next(iter(self.reading.items()), None)  # dicts keep arrival order
                if oldest is None:
                    oldest = min(self.started.items(), key=lambda item: item[1], default=None)
                    if oldest is not None and time.monotonic() - oldest[1] <= EVICT_AFTER:
                        oldest = None
                if oldest is not None:  # not picked again while its thread winds down
                    self.started.pop(oldest[0], None)
                    self.reading.pop(oldest[0], None)
            if oldest is not None:
                try:
                    oldest[0].shutdown(socket.SHUT_RDWR)  # its thread ends, its slot frees
                except OSError:
                    pass

        def get_request(self) -> tuple[Any, Any]:
            try:
                return super().get_request()
            except OSError as exc:  # socketserver passes over it, and selects again
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):  # that client's
                    # No descriptor (EMFILE under LimitNOFILE), no buffers: the connection
                    # stays queued, the listener readable, and serve_forever spun a core on
                    # it. It rests, as the control socket does (farm.pools.controlserver).
                    cannot_accept(
                        "metrics: cannot accept a connection (%s): scrapes wait; raise the"
                        " descriptor limit (LimitNOFILE=, docs/operations.md)",
                        exc.strerror or exc,
                    )
                    self.stopping.wait(ACCEPT_PAUSE)
                raise

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client gone silent or evicted: no traceback on the supervisor's stderr.
            log.debug("metrics: a connection from %s ended in error", client_address)

        def forget(self, request: Any) -> None:
            with self.lock:
                self.started.pop(request, None)
                self.reading.pop(request, None)
            self.slots.release()

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.forget(request)

        def shutdown(self) -> None:
            self.stopping.set()  # a rest after a failed accept ends now
            super().shutdown()
            for other in self.others:
                other.shutdown()
                other.server_close()

    for name in SCRAPE_IMPORTS:  # now, while a descriptor is free to read each file
        importlib.import_module(name)
    host, _, port = address.rpartition(":")  # the config checked it; port 0: any free one
    host = host.strip("[]")
    # Every address of ``host``: "localhost" is often [::1] first (Debian's, Ubuntu's
    # /etc/hosts), and binding getaddrinfo's first alone left 127.0.0.1 at the port free.
    found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    places = list(dict.fromkeys((family, str(addr[0])) for family, _, _, _, addr in found))
    registry = CollectorRegistry(auto_describe=False)
    collector = SupervisorCollector(supervisor)
    registry.register(collector)
    app = reused_when_slow(make_wsgi_app(NamesFiltered(registry)), collector.server_part)

    def serve(family: int, ip: str, at: int, name: str) -> Server:
        kind = type("Server", (Server,), {"address_family": family})
        made: Server = make_server(ip, at, app, kind, Handler)
        # shutdown() waits for serve_forever to look at its flag, once a poll: at the default
        # half second, every stop of the farm (`farm stop`, a deploy's restart) took that
        # long more.
        forever = functools.partial(made.serve_forever, poll_interval=0.1)
        threading.Thread(target=forever, name=name, daemon=True).start()
        return made

    try:
        server = serve(*places[0], int(port), "metrics")
    except OSError as exc:  # the supervisor warns and runs without: said whose the port is
        who = (
            another_users_listener(places[0][1], int(port))
            if exc.errno == errno.EADDRINUSE
            else None
        )
        if who is None:
            raise
        why = f"{exc.strerror}: {who}: another user's process listens there"
        raise OSError(exc.errno, why) from exc
    server.others = []
    bound = server.server_address[1]
    served = [places[0][1]]
    for family, ip in places[1:]:
        name = "metrics-ipv6" if ip in HOLDS_IPV6_LOOPBACK else f"metrics-{ip}"
        try:
            server.others.append(serve(family, ip, bound, name))
            served.append(ip)
        except OSError as exc:  # a warning, as the twin's: the first address is served
            if exc.errno in NO_IPV6:  # IPv6 off (Docker): localhost is 127.0.0.1 alone
                continue
            fix = "give [supervisor] metrics another port"
            if exc.errno == errno.EADDRINUSE:
                fix = taken_hint(bound, "the farm's metrics", fix)
            why = f"cannot serve on {Address('tcp', ip, bound)} too ({exc.strerror or exc})"
            log.warning("metrics: %s: on %s alone (%s)", why, ", ".join(served), fix)
    # Prometheus, `curl localhost:9730`, `farm top --metrics localhost:9730` try [::1] first,
    # where another user could answer them (hiding the farm's alerts): farm.loopback. Not
    # where [::1] was among localhost's addresses tried above: it said why once already.
    held = [(ip, bound) for _, ip in places]
    if any(twin_needed(ip, bound, held) for ip in served):
        try:
            twin = serve_twin(server, bound, "metrics-ipv6")
        except OSError as exc:  # a warning, as the port taken is: 127.0.0.1 is still served
            fix = "give [supervisor] metrics another port"
            if exc.errno == errno.EADDRINUSE:
                fix = taken_hint(bound, "the farm's metrics", fix)
            why = f"cannot serve on [::1]:{bound} too ({exc.strerror or exc})"
            log.warning("metrics: %s: on %s:%d alone (%s)", why, host, bound, fix)
        else:
            if twin is not None:
                server.others.append(twin)
                served.append("::1")
    urls = " and ".join(f"http://{Address('tcp', ip, bound)}/metrics" for ip in served)
    log.info("metrics on %s (pid %d)", urls, os.getpid())
    return server
