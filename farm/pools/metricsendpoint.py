"""The supervisor's metrics endpoint as an HTTP server (``[supervisor] metrics``): its
bounds against other local users (scrapes served at once, silent connections dropped), and
its [::1] twin (farm.loopback). What it serves is farm.pools.metricsapp's app of
farm.pools.metrics.SupervisorCollector's samples."""

from __future__ import annotations

import errno
import functools
import importlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

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
from farm.pools.metricsapp import NamesFiltered, only_metrics, reused_when_slow
from farm.slowreuse import EVICT_AFTER, MAX_SCRAPERS, SCRAPE_TIMEOUT

if TYPE_CHECKING:
    from farm.pools.steering import Steering

__all__ = ["serve_metrics"]

log = logging.getLogger("farm.supervisor")

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
    app = only_metrics(
        reused_when_slow(make_wsgi_app(NamesFiltered(registry)), collector.server_part)
    )

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
