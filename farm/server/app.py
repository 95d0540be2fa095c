"""The job server process: listeners (TCP, Unix), start-up, signals, shutdown.

``farm server`` and ``python -m farm.server`` both land in ``main``, which
accepts gearmand's common flags so farm can stand in wherever gearmand is
started. One asyncio loop (uvloop when installed) owns all job state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from farm.lifetime import die_with_parent
from farm.protocol import PacketType as T
from farm.protocol import encode_res
from farm.server.connection import Connection, error
from farm.server.jobs import JobServer
from farm.server.options import ServerOptions, parse_args
from farm.server.store import StoreError, open_store

log = logging.getLogger("farm.server")

#: How long a stopping server waits for replies still being written.
DRAIN_SECONDS = 2.0

VERBOSE_NAMES = ("ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")


class Server:
    """Listeners plus the job model; connections write through ``flush``."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.max_packet = options.max_packet
        self.exceptions_default = options.exceptions
        self.verbose_name = VERBOSE_NAMES[min(options.verbose, len(VERBOSE_NAMES) - 1)]
        self.connections: set[Connection] = set()
        self.dirty: list[Connection] = []
        self.listeners: list[asyncio.AbstractServer] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Event | None = None
        self.all_closed: asyncio.Event | None = None  # set once the last connection is gone
        self.store = open_store(options.store, sync=options.store_sync)
        self.jobs = JobServer(
            store=self.store,
            max_queued_bytes=options.max_queued_bytes,
            max_queue=options.max_queue,
            job_retries=options.job_retries,
            call_later=self._call_later,
            cancel_timer=lambda handle: handle.cancel(),  # type: ignore[attr-defined]
        )

    def _call_later(self, delay: float, callback: Callable[[], None]) -> object:
        assert self.loop is not None

        def run() -> None:
            callback()
            self.flush()

        return self.loop.call_later(delay, run)

    def flush(self) -> None:
        """Write what every touched connection is owed: one write per connection per turn.

        Background jobs staged in this turn are committed first, so no
        JOB_CREATED leaves before its job is on disk.
        """
        store = self.store
        if store is not None and store.pending:
            failed = store.commit()
            if failed:
                self._refuse_unstored(failed)
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()

    def _refuse_unstored(self, handles: list[bytes]) -> None:
        """The commit failed: turn those jobs' JOB_CREATED into QUEUE_ERROR and forget them."""
        text = self.store.broken if self.store is not None else "job store error"
        refusal = error("QUEUE_ERROR", text or "job store error")
        for handle in handles:
            self.jobs.unstore(handle)
            created = encode_res(T.JOB_CREATED, handle)
            for conn in self.dirty:
                if created in conn.out:
                    conn.out[:] = conn.out.replace(created, refusal)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        opts = self.options
        replayed = self.jobs.replay()
        if replayed:
            log.warning("replayed %d background jobs from %s", replayed, opts.store)
        self.flush()
        factory = lambda: Connection(self)  # noqa: E731
        tls = self._tls_context()
        for addr in opts.listen:
            if addr.startswith("unix:"):
                await self._listen_unix(addr[5:], factory)
                continue
            host, port = _split_host_port(addr, opts.port)
            srv = await self.loop.create_server(
                factory, host or None, port, backlog=opts.backlog, reuse_address=True, ssl=tls
            )
            self.listeners.append(srv)
            log.info("listening on %s:%d%s", host or "*", port, " (TLS)" if tls else "")
        for path in opts.unix:
            await self._listen_unix(path, factory)

    def _tls_context(self) -> ssl.SSLContext | None:
        opts = self.options
        if not opts.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
        if opts.tls_ca:
            ctx.load_verify_locations(opts.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def _listen_unix(self, path: str, factory: Callable[[], Connection]) -> None:
        assert self.loop is not None
        sock_path = Path(path)
        if sock_path.exists() and stat.S_ISSOCK(sock_path.stat().st_mode):
            sock_path.unlink()  # a stale socket from a previous run
        old_umask = os.umask(0o777 & ~self.options.unix_mode)
        try:
            srv = await self.loop.create_unix_server(factory, path, backlog=self.options.backlog)
        finally:
            os.umask(old_umask)
        os.chmod(path, self.options.unix_mode)
        self.listeners.append(srv)
        log.info("listening on unix:%s", path)

    def stop(self) -> None:
        """Stop now: close listeners and connections."""
        log.info("stopping")
        self.jobs.stopping = True
        for srv in self.listeners:
            srv.close()
        for conn in list(self.connections):
            conn.close()
        if self.stopped is not None:
            self.stopped.set()

    async def _drain_connections(self, limit: float) -> None:
        """Let closing connections write what they still owe (a result in flight),
        up to ``limit`` seconds: the transports close themselves once flushed."""
        if not self.connections:
            return
        self.all_closed = asyncio.Event()
        try:
            await asyncio.wait_for(self.all_closed.wait(), limit)
        except TimeoutError:
            log.warning(
                "%d connections still writing after %.0f s; closing", len(self.connections), limit
            )

    def stop_gracefully(self) -> None:
        """SIGUSR1: stop accepting; exit once no job is running."""
        log.info("graceful stop: no new connections; waiting for running jobs")
        for srv in self.listeners:
            srv.close()
        if not self.jobs.running_count():
            self.stop()
        else:
            self.jobs.on_idle = self.stop

    async def serve(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.stop_gracefully)
        assert self.stopped is not None
        await self.stopped.wait()
        self.flush()
        await self._drain_connections(DRAIN_SECONDS)
        if self.store is not None:
            self.store.close()
        for path in self.options.unix + [
            a[5:] for a in self.options.listen if a.startswith("unix:")
        ]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _split_host_port(addr: str, default_port: int) -> tuple[str, int]:
    if addr.startswith("["):  # [::1]:4730
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if addr.count(":") == 1:
        host, _, port = addr.partition(":")
        return host, int(port)
    return addr, default_port


def _raise_fd_limit(wanted: int) -> None:
    """Lift the soft descriptor limit toward ``wanted`` (as gearmand's -f does), never past hard."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - best effort
        pass


def _setup_logging(options: ServerOptions) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(options.verbose, 2)]
    fmt = "%(asctime)s farm-server[%(process)d] %(levelname)s %(message)s"
    if options.log_file == "none":
        logging.basicConfig(level=logging.CRITICAL + 1)
    elif options.log_file == "stderr":
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    else:
        logging.basicConfig(level=level, format=fmt, filename=options.log_file)


def run(options: ServerOptions) -> int:
    """Run the server until a signal stops it; the process exit code."""
    _setup_logging(options)
    try:
        from setproctitle import setproctitle

        setproctitle(f"farm: server :{options.port}")
    except ImportError:  # pragma: no cover - optional nicety
        pass
    if options.parent_pid and not die_with_parent(options.parent_pid):
        print("farm server: the parent process is already gone; not starting", file=sys.stderr)
        return 1
    _raise_fd_limit(options.max_connections + 64)
    if options.pid_file:
        Path(options.pid_file).write_text(f"{os.getpid()}\n")
    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable without it
        runner = asyncio.run
    try:
        server = Server(options)
    except StoreError as exc:
        hint = "use --store PATH, or --store none for memory only"
        print(f"farm server: {exc} ({hint})", file=sys.stderr)
        return 2
    try:
        runner(server.serve())
    except OSError as exc:
        print(f"farm server: cannot listen: {exc}", file=sys.stderr)
        return 1
    finally:
        if options.pid_file:
            Path(options.pid_file).unlink(missing_ok=True)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "farm server") -> int:
    return run(parse_args(argv, prog))
