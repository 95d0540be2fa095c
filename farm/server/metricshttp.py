"""``--metrics HOST:PORT``: the job server's exposition (farm.server.exposition) over HTTP,
in the server's own loop, bounded against other local users (connections held open,
evicted); and ``?name[]=``'s filter, as prometheus_client's endpoints (the supervisor's,
farm.pools.metricsendpoint) read it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qs

from farm.server.exposition import CONTENT_TYPE, exposition
from farm.server.hub import Hub
from farm.slowreuse import EVICT_AFTER, MAX_SCRAPERS, SCRAPE_TIMEOUT

__all__ = ["MAX_HEAD", "MetricsEndpoint", "only_named"]

#: The most a request's head (its request line and headers) may hold; past it: 431. The
#: StreamReader's own limit on a line, 64 KiB, as the supervisor's endpoint (http.server)
#: takes one line.
MAX_HEAD = 1 << 16
TOO_LARGE = b"431 Request Header Fields Too Large"


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """A request's head up to the blank line that ends it, its lines ended by CRLF or a
    bare LF, as RFC 9112 lets a server take them (and the supervisor's endpoint does);
    None when it is over MAX_HEAD. Read for a CRLF CRLF alone, `printf 'GET /metrics
    HTTP/1.0\\n\\n' | nc` was answered by nothing, cut off at the scrape timeout."""
    head = b""
    taken = 0  # blank lines before the request line too: a stream of them is bounded
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:  # one line over the StreamReader's limit
            return None
        taken += len(line)
        if taken > MAX_HEAD:
            return None
        if line in (b"\r\n", b"\n"):
            if head:
                return head
            continue  # blank lines before the request line are passed over (RFC 9112)
        head += line


def only_named(text: bytes, names: Collection[bytes]) -> bytes:
    """The samples of ``text`` (Prometheus' text format) whose name is among ``names``, each
    under its family's HELP and TYPE lines; a family with none of them left out. A name is
    a sample's, as prometheus_client's ``name[]`` matches it (``farm_jobs_failed_total``,
    ``farm_job_run_seconds_bucket``). It works on the text, a reused one too (SLOW_EXPOSITION),
    so the exposition is not made again for it; its pass over the lines, made for each
    scrape, is of the order of sending the text whole (0.14 s for 96 MB of a local user's
    long names: 46,000 lines, as labelled names are bounded, MAX_LABELLED).

    One line a sample: the format writes a newline in a label value or a HELP text as
    ``\\n``, and the server refuses function names holding control characters."""
    kept: list[bytes] = []
    head: list[bytes] = []  # the HELP and TYPE lines of the family being read
    for line in text.split(b"\n"):
        if line.startswith(b"#"):
            head = [line] if line.startswith(b"# HELP ") else [*head, line]
        elif line.partition(b"{")[0].partition(b" ")[0] in names:
            kept += head
            head = []
            kept.append(line)
    return b"".join(line + b"\n" for line in kept)


class MetricsEndpoint:
    """``GET /metrics`` on HOST:PORT, answered in the server's own loop (the numbers are read
    where they change, so no lock is needed), one request per connection, at most
    MAX_SCRAPERS connections at once: any local user can reach the port, and connections
    held open there took the descriptors kept for the Unix socket's callers. A user who
    keeps them all open must not keep Prometheus out either: see MAX_SCRAPERS.

    ``close`` ends the scrapes being answered too, and ``wait_closed`` lets their tasks
    end: left to the loop's end, each was cancelled there, and Python 3.11's stream
    callback logged that cancel as an error with two tracebacks on every stop."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Open connections and when each came, oldest first (dicts keep their order), and
        # those of them whose request has not all come yet.
        self.open_now: dict[asyncio.WriteTransport, float] = {}
        self.reading: dict[asyncio.WriteTransport, float] = {}
        self.answering: set[asyncio.Task[Any]] = set()
        self.listener: asyncio.Server | None = None
        self.closed = False

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen on HOST:PORT; the listener (closed with the server's others)."""
        self.listener = await asyncio.start_server(self._answer, host, port, reuse_address=True)
        return self.listener

    async def start_on(self, sock: socket.socket) -> asyncio.AbstractServer:
        """Listen on ``sock`` too (the [::1] twin of ``start``'s, farm.loopback); the listener,
        closed with the server's others (``Server.stop``)."""
        return await asyncio.start_server(self._answer, sock=sock)

    def close(self) -> None:
        """No new connections; those open are aborted (a stop does not wait on a scrape)."""
        self.closed = True
        if self.listener is not None:
            self.listener.close()
        for transport in list(self.open_now):
            transport.abort()

    async def wait_closed(self, limit: float) -> None:
        """Until every scrape's task has ended, up to ``limit`` seconds."""
        # A connection accepted just before close has a task that has not run yet: one
        # turn lets it start, see ``closed`` and end.
        await asyncio.sleep(0)
        if self.answering:
            await asyncio.wait(set(self.answering), timeout=limit)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.answering.add(task)
        try:
            await self._scrape(reader, writer)
        finally:
            self.answering.discard(task)

    async def _scrape(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_now, reading = self.open_now, self.reading
        if self.closed:
            writer.transport.abort()
            return
        now = time.monotonic()
        if len(open_now) >= MAX_SCRAPERS:
            # One still sending its request goes first, however young: Prometheus sends its
            # request as it connects, a user holding places never finishes one (and one
            # reopening them faster than once a second kept every scrape out by age alone).
            oldest, since = next(iter(reading.items()), None) or next(iter(open_now.items()))
            if oldest not in reading and now - since <= EVICT_AFTER:
                writer.transport.abort()
                return
            del open_now[oldest]  # its task ends on the abort and finds itself gone
            reading.pop(oldest, None)
            oldest.abort()
        open_now[writer.transport] = reading[writer.transport] = now
        try:
            head = await asyncio.wait_for(read_head(reader), SCRAPE_TIMEOUT)
            reading.pop(writer.transport, None)
            method, _, rest = (head or b"").partition(b"\n")[0].rstrip(b"\r").partition(b" ")
            path, _, query = rest.partition(b" ")[0].partition(b"?")
            if head is None:
                status, body, kind = TOO_LARGE, b"request head too large\n", b"text/plain"
            elif method not in (b"GET", b"HEAD"):
                status, body, kind = b"405 Method Not Allowed", b"GET only\n", b"text/plain"
            elif path != b"/metrics":
                status, body, kind = b"404 Not Found", b"see /metrics\n", b"text/plain"
            else:
                status, body, kind = b"200 OK", exposition(self.hub), CONTENT_TYPE.encode()
                # ?name[]=: as the supervisor's endpoint (prometheus_client's) answers it.
                # Sent whole, a job that scrapes with it got every series of the server.
                # Latin-1 both ways: a name's bytes as they came, %-escapes too (UTF-8's
                # decoding gave "€" of %E2%82%AC, which no encoding back to bytes took).
                names = parse_qs(query.decode("latin-1"), encoding="latin-1").get("name[]")
                if names is not None:
                    body = only_named(body, {name.encode("latin-1") for name in names})
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + kind
                + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            )
            if method != b"HEAD":
                # Written as it is: a reused exposition (tens of MB with a local user's long
                # names) is then one object that every connection's buffer refers to. Joined
                # to the head it was a copy for each, and 32 connections that did not read
                # held 1.3 GB of the server's memory.
                writer.write(body)
            await asyncio.wait_for(writer.drain(), SCRAPE_TIMEOUT)  # a client that reads nothing
        except TimeoutError:
            writer.transport.abort()  # close() would wait for the reply to leave: for ever
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            open_now.pop(writer.transport, None)
            reading.pop(writer.transport, None)
            writer.close()
