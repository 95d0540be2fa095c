"""The job server process: listeners (TCP, Unix), start-up, signals, shutdown.

``farm server`` and ``python -m farm.server`` both land in ``main``, which
accepts gearmand's common flags so farm can stand in wherever gearmand is
started. One asyncio loop (uvloop when installed) owns all job state.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from farm.errors import TLSFileError
from farm.lifetime import die_with_parent
from farm.loopback import taken_hint, twin_needed, twin_socket
from farm.net import Address, parse_address
from farm.paths import open_own_file
from farm.server.connection import Connection
from farm.server.hub import Hub
from farm.server.legacystore import take_older_store, warn_stranded
from farm.server.listenfirst import listen_first
from farm.server.metricshttp import MetricsEndpoint
from farm.server.options import ServerOptions, parse_args
from farm.server.process import (
    ReplayProgress,
    StoppedEarly,
    detach,
    detached,
    fit_fd_limit,
    reopen_log,
    setup_server_logging,
    take_early_stop,
    title_address,
)
from farm.server.refusals import (
    ListenError,
    another_users_socket,
    fatal,
    fix_hint,
    listen_refused,
    store_in_use_hint,
    taken_by_another_user,
)
from farm.server.store import (
    DamagedStore,
    StoreError,
    StoreInUse,
    StoreUnopenable,
    StoreUnreadable,
    memory_only,
)
from farm.server.tlsgate import Handshakes, TLSGate, server_tls_context
from farm.unixsocket import clear_socket_path, set_socket_mode

log = logging.getLogger("farm.server")

#: How long a stopping server waits for replies still being written.
DRAIN_SECONDS = 2.0


class Server:
    """The process around a ``Hub``: its listeners, signals and shutdown."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.hub = Hub(options)  # raises StoreError when the store cannot be opened
        self.jobs = self.hub.jobs
        self.jobs.parent_pid = options.parent_pid
        self.listeners: list[asyncio.AbstractServer] = []
        self.bound: dict[str, int] = {}  # Unix socket path -> its inode, removed at the end
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Event | None = None
        self.listening: Callable[[], None] | None = None  # called once every listener is up
        self.metrics: MetricsEndpoint | None = None
        self.handshakes = Handshakes()  # TLS peers accepted and not through theirs yet

    async def start(self) -> None:
        self.loop = self.hub.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        opts = self.options
        progress = ReplayProgress(opts.progress_fd)
        try:
            replayed = self.jobs.replay(progress.tell)
        finally:
            progress.close()  # its end: the supervisor stops extending the start
        if replayed:
            log.warning("replayed %d background jobs from %s", replayed, opts.store)
            self.hub.look_soon()  # held: a store deleted under an idle server is made again
        self.hub.flush()
        factory = lambda: Connection(self.hub)  # noqa: E731
        shaking = self.handshakes
        tls = server_tls_context(self.options)
        for addr in opts.listen:  # TCP only: -L unix:PATH is sorted into opts.unix
            tcp = parse_address(addr, default_port=opts.port)
            # TLS begins only once the connection is counted (farm.server.tlsgate).
            gated = factory if tls is None else lambda: TLSGate(self.hub, tls, factory, shaking)
            try:
                srv = await self.loop.create_server(
                    gated,
                    tcp.host or None,
                    tcp.port,
                    backlog=opts.backlog,
                    reuse_address=True,
                )
            except OSError as exc:
                raise ListenError(str(tcp), exc, taken_by_another_user(opts, tcp, exc)) from exc
            self.listeners.append(srv)
            log.info("listening on %s%s", tcp, " (TLS)" if tls else "")
            twin = functools.partial(self.loop.create_server, gated, backlog=opts.backlog)
            await self._hold_ipv6_loopback(tcp, srv, twin, fix_hint(opts, "twin"))
            if opts.tcp_admin == "full":  # gearmand's way; every local user reaches TCP
                log.info(
                    "admin commands that change the queues (cancel job, maxqueue, drop"
                    " function) are open to everyone who reaches %s; --tcp-admin read-only"
                    " keeps them to %s",
                    tcp,
                    "the Unix socket" if opts.unix else "a Unix socket (--unix PATH; none here)",
                )
        for path in opts.unix:
            await self._listen_unix(path, factory)
        if opts.metrics:
            where = parse_address(opts.metrics)
            self.metrics = MetricsEndpoint(self.hub)
            hint = "give --metrics another HOST:PORT, or leave it off"
            try:
                listener = await self.metrics.start(where.host, where.port)
            except OSError as exc:
                raise ListenError(f"--metrics {opts.metrics}", exc, hint) from exc
            self.listeners.append(listener)
            log.info("metrics on http://%s/metrics", opts.metrics)
            # Prometheus or `curl localhost:PORT` try [::1] first, and a user there could
            # answer in the farm's place (hiding its alerts): taken, it stops the server
            # as the metrics port taken does.
            await self._hold_ipv6_loopback(where, listener, self.metrics.start_on, hint)

    async def _hold_ipv6_loopback(
        self,
        beside: Address,
        srv: asyncio.Server,
        serve: Callable[..., Awaitable[asyncio.AbstractServer]],
        fix: str,
    ) -> None:
        """Listen on [::1] too, at the port ``srv`` has on ``beside`` (127.0.0.1 or 0.0.0.0):
        clients of `localhost` (PHP's `addServer()`, `gearadmin`, Prometheus) try [::1]
        first where /etc/hosts says so, and any local user could answer them there
        (farm.loopback). ``serve(sock=)`` serves the twin's socket as ``srv`` is; ``fix``
        is the port hint of ``beside``, for the error when [::1] is taken."""
        opts = self.options
        port = srv.sockets[0].getsockname()[1]  # port 0 asked: the one it got
        tcp = [parse_address(a, default_port=opts.port) for a in opts.listen]
        if not twin_needed(beside.host, port, [(a.host, a.port) for a in tcp]):
            return
        where = f"[::1]:{port} (localhost's IPv6 address, held beside {beside})"
        try:
            sock = twin_socket(port, opts.backlog)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fix = taken_hint(port, "this server", fix)
            raise ListenError(where, exc, fix) from exc
        if sock is None:
            return  # no IPv6 here: `localhost` is 127.0.0.1 alone
        self.listeners.append(await serve(sock=sock))
        tls = " (TLS)" if self.options.tls_cert else ""  # as its twin's line says
        log.info("listening on [::1]:%d (localhost's IPv6 address)%s", port, tls)

    async def _listen_unix(self, path: str, factory: Callable[[], Connection]) -> None:
        assert self.loop is not None
        old_umask = os.umask(0o777 & ~self.options.unix_mode)
        try:
            clear_socket_path(path)  # a stale socket from a previous run; never a live one
            srv = await self.loop.create_unix_server(factory, path, backlog=self.options.backlog)
        except OSError as exc:
            raise ListenError(
                f"unix:{path}", exc, another_users_socket(self.options, path, exc)
            ) from exc
        finally:
            os.umask(old_umask)
        self.bound[path] = set_socket_mode(path, self.options.unix_mode)
        self.listeners.append(srv)
        log.info("listening on unix:%s", path)

    def stop(self) -> None:
        """Stop now: close listeners and connections."""
        log.info("stopping")
        self.jobs.stopping = True
        for srv in self.listeners:
            srv.close()
        if self.metrics is not None:
            self.metrics.close()
        self.handshakes.cancel()  # no connection is made after the stop
        connections = list(self.hub.connections)
        for conn in connections:  # what was read counts: a worker's result in it goes out
            conn.finish_backlog()  # to its client, who is not closed yet
        for conn in connections:
            if conn.answering:  # its reply (a backup's) is being made: closed once sent
                conn.hung_up = True
            else:
                conn.close()
        if self.stopped is not None:
            self.stopped.set()

    async def _drain_connections(self, limit: float) -> None:
        """Let closing connections write what they still owe (a result in flight),
        up to ``limit`` seconds: the transports close themselves once flushed."""
        hub = self.hub
        if not hub.connections:
            return
        hub.all_closed = asyncio.Event()
        try:
            await asyncio.wait_for(hub.all_closed.wait(), limit)
        except TimeoutError:
            log.warning(
                "%d connections still writing after %.0f s; closing", len(hub.connections), limit
            )
            for conn in list(hub.connections):  # their peers read nothing: what is owed goes
                conn.abort()

    def stop_gracefully(self) -> None:
        """SIGUSR1: stop accepting; exit once no job is running."""
        log.info("graceful stop: no new connections; waiting for running jobs")
        for srv in self.listeners:
            srv.close()
        if not self.jobs.running_count():
            self.stop()
        else:
            self.jobs.on_idle = self.stop

    def terminated(self) -> None:
        """SIGTERM: stop at once, as gearmand does; under `farm up`, only once its supervisor
        is gone (the death signal it asked for). While the supervisor lives, the SIGTERM
        came to it too (`systemctl kill farm` signals every process of the unit): it drains
        the workers, then stops this server gracefully (SIGUSR1), so a job in hand finishes
        and is answered, not cut off, stored still, to run again at the next start."""
        parent = self.options.parent_pid
        if self.options.supervised and parent is not None and os.getppid() == parent:
            log.warning(  # said at the server's default level: a signal not acted on
                "SIGTERM left to farm up (pid %d), which stops the job server once its"
                " workers are done (farm stop)",
                parent,
            )
            return
        self.stop()

    async def serve(self) -> None:
        try:
            await self.start()
        except BaseException:  # a refused address: the listeners made before it go with it
            for srv in self.listeners:
                srv.close()
            self.unbind()
            raise
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.terminated)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.stop_gracefully)
        # SIGHUP ended the server (Python's default): logrotate's postrotate for gearmand
        # (Debian's gearman-job-server) sends it every night, to reopen the log.
        loop.add_signal_handler(signal.SIGHUP, reopen_log)
        if self.listening is not None:  # after the handlers: a stop right away is graceful
            self.listening()
        # Off the start and the loop: it reads other stores, up to MAX_LOOKED_AT of them (a
        # server on memory alone, its default store only: its jobs were left with no word).
        looked = asyncio.ensure_future(asyncio.to_thread(warn_stranded, self.options))
        assert self.stopped is not None
        await self.stopped.wait()
        await looked  # its warnings said before the server's end
        await self.wind_down()

    async def wind_down(self) -> None:
        """After ``stop``: what is owed written (for a while), then the store closed."""
        if self.hub.writer is not None and (task := self.hub.writer.task) is not None:
            await asyncio.wait([asyncio.wrap_future(task)])  # a backup: its reply sent
        self.hub.flush()
        await self._drain_connections(DRAIN_SECONDS)
        if self.metrics is not None:
            await self.metrics.wait_closed(DRAIN_SECONDS)
        await self.handshakes.wait_closed(DRAIN_SECONDS)
        self.hub.close_store()
        self.unbind()

    def unbind(self) -> None:
        """Remove the paths of its Unix sockets: a client then finds no server there."""
        for path, inode in self.bound.items():
            try:
                if os.stat(path).st_ino == inode:  # ours still: not another's that replaced it
                    os.unlink(path)
            except FileNotFoundError:
                pass


def run(options: ServerOptions) -> int:
    """Run the server until a signal stops it; the process exit code."""
    try:
        take_early_stop()  # first: a stop that waited blocked comes at once
        return _run(options)
    except StoppedEarly:
        log.info("graceful stop before the server served: stopped")
        return 0


def _run(options: ServerOptions) -> int:
    ready = detach() if options.daemon else None
    try:
        setup_server_logging(options)
    except OSError as exc:
        print(f"farm server: cannot open the log file: {exc} (-l/--log-file)", file=sys.stderr)
        return 2
    for flag, why in options.ignored:
        if flag in ("-u", "--user"):  # gearmand would have dropped root: say who runs this
            log.warning(
                "gearmand's %s is ignored: %s (this server runs as uid %d)", flag, why, os.getuid()
            )
        else:
            log.info("gearmand's %s is ignored: %s", flag, why)
    try:
        from setproctitle import setproctitle

        title = f"farm: server {title_address(options)}"
        # A path of bytes that are not UTF-8 (surrogates here) has no title of its own.
        setproctitle(title.encode(errors="surrogateescape").decode(errors="backslashreplace"))
    except ImportError:  # pragma: no cover - optional nicety
        pass
    if options.parent_pid and not die_with_parent(options.parent_pid):
        print("farm server: the parent process is already gone; not starting", file=sys.stderr)
        return 1
    fit_fd_limit(options)
    if options.pid_file:
        try:
            fd = open_own_file(options.pid_file, append=False)
            with os.fdopen(fd, "w") as pid_file:
                pid_file.write(f"{os.getpid()}\n")
        except OSError as exc:
            print(f"farm server: cannot write the pid file: {exc} (-P/--pid-file)", file=sys.stderr)
            return 2
    try:
        return _serve(options, ready)
    finally:
        if options.pid_file:  # also when the store or the address was refused
            Path(options.pid_file).unlink(missing_ok=True)


def _serve(options: ServerOptions, ready: int | None = None) -> int:
    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable without it
        runner = asyncio.run
    if not memory_only(options.store) and (refused := take_older_store(options)):
        fatal(options, refused)
        return 2
    try:
        listen_first(options)  # a gearmand queue in the store: taken over once they are free
        server = Server(options)
    except ListenError as exc:
        return listen_refused(options, exc)
    except (DamagedStore, StoreUnreadable) as exc:  # its own fix: another path strands its jobs
        fatal(options, str(exc))
        return 2
    except StoreInUse as exc:
        fatal(options, f"{exc} ({store_in_use_hint(options)})")
        return 2
    except StoreUnopenable as exc:  # the file's fix: another path strands its jobs
        fatal(options, f"{exc} ({fix_hint(options, 'held')})")
        return 2
    except StoreError as exc:
        fatal(options, f"{exc} ({fix_hint(options, 'store')})")
        return 2
    if ready is not None:
        server.listening = lambda: detached(ready)
    try:
        runner(server.serve())
    except StoppedEarly:  # SIGUSR1 while it started: its sockets go, as at its end
        server.unbind()
        raise
    except (StoreError, TLSFileError) as exc:  # a damaged store, an unusable TLS file
        fatal(options, str(exc))
        return 2
    except ListenError as exc:
        return listen_refused(options, exc)
    except OSError as exc:
        fatal(options, f"cannot listen: {exc}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "farm server") -> int:
    return run(parse_args(argv, prog))
