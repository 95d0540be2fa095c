"""The supervisor's local job server process: start it, see it accept, restart it.

The server is ``python -m farm.server`` with the flags of [server]; it sets its
own title (``farm: server :4730``). When it dies it is restarted with the same
backoff as a worker slot; workers reconnect by themselves meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable

from farm.client.admin import admin_query
from farm.config import ServerConfig
from farm.errors import ConfigError
from farm.net import connectable
from farm.paths import NoStateDirectory, make_dirs, state_dir
from farm.pools.exits import describe_exit
from farm.pools.restartpolicy import RestartHistory
from farm.pools.spawn import exec_text, python_module, spawn
from farm.protocol.admin import named_lines

__all__ = ["LocalServer", "check_listen_name"]

log = logging.getLogger("farm.supervisor")

#: What the resolver answers for a name that names no address: only a fix of the config (or
#: of DNS) heals it. Not EAI_AGAIN, a resolver not reachable yet (at boot), which a restart
#: outlives; nor an address not on this host (EADDRNOTAVAIL): at boot it may come up after
#: farm (the unit is ordered after network.target only; an IPv6 address is unusable until
#: its duplicate check ends), and systemd's restart then brings the farm up.
NO_SUCH_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})
#: Seconds the server has to answer ``poolfunctions``, and the wait before it is asked again.
NAMING_TIMEOUT, NAMING_RETRY = 0.5, 5.0
#: Asks of ``poolfunctions`` in a row that failed before it is said above debug, once: one
#: the server is too busy to answer is nothing, but one it never answers went on unseen.
NAMING_WARN_AFTER = 3
#: A command worker that ran when the server died and ends this long after the new one
#: answers still ended of that death: its reconnect tries gave up as the server came back.
LOST_WINDOW = 5.0
#: How long ``refuses`` waits on its connect: a live server's listener answers at once.
PROBE_WAIT = 0.05


def check_listen_name(config: ServerConfig, source: str) -> None:
    """ConfigError (exit 2, which the unit does not restart) when the TCP address of
    ``[server] listen`` has a host name that names no address: the server could never
    listen there, and systemd restarted `farm up` every few seconds for ever. (A name no
    resolver is asked for, ``a..b``, never reads: farm.hostnames, as the config is read.)"""
    where = next((a for a in config.listen if not a.startswith("unix:")), None)
    if where is None or config.tcp is None or not config.tcp[0]:  # none, or every address
        return
    host, port = config.tcp
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        if exc.errno not in NO_SUCH_NAME:
            return  # the server's own try says why; exit 1, and systemd tries again
        why = exc.strerror
    else:
        return
    raise ConfigError(
        f"{source}: server.listen: {where}: {why}; give an address of this host or a name"
        " that resolves to one (restarting cannot fix it)"
    )


class LocalServer(RestartHistory):
    """One job server child process and its restart history (the slots' policy)."""

    def __init__(
        self, config: ServerConfig, env: dict[str, str], *, log_format: str = "text"
    ) -> None:
        super().__init__()
        self.config = config
        self.env = env
        self.log_format = log_format  # [supervisor] log_format: the server logs alike
        self.pid = 0
        self.started = 0.0
        self.ready = False
        self.ready_at = 0.0  # when it last answered after its start (``answered``)
        self.ever_ready = False  # a server that never listened will not by retrying
        self.stopping = False
        self.progress_fd = -1  # the pipe its store's replay writes to (ReplayProgress)
        self.progressed_at = 0.0  # when that pipe last said the replay goes on
        # The functions the farm's pools serve now (the supervisor's config, reloads too):
        # the server labels them in its metrics before their workers register.
        self.pool_functions: Callable[[], Iterable[str]] = tuple
        # Those the running server was told (its argv, then ``poolfunctions``), and when it
        # may be asked again after it did not answer.
        self.named: frozenset[str] = frozenset()
        self.name_after = 0.0
        self.naming_failures = 0  # asks of it in a row that failed (NAMING_WARN_AFTER)

    def say_where_jobs_are_kept(self) -> None:
        """Say where background jobs are kept, as a warning when that is memory only
        (``store = "none"``, also the default's fallback): said, never silent. Said by `farm
        up` once it knows it is the farm's one supervisor, not by a second `farm up` that is
        about to be refused."""
        if self.config.store != "none":
            log.info("background jobs are stored in %s", self.config.store)
        else:
            if self.config.store_given:  # chosen: no word of a default that failed
                why = " in the config"
            else:
                try:
                    why = f"; the default, a file in {state_dir()}, needs that directory writable"
                except NoStateDirectory as exc:
                    why = f"; the default has nowhere to go: {exc}"
            log.warning(
                "background jobs are kept in memory only and are lost when the job server"
                ' stops ([server] store = "none"%s)',
                why,
            )

    def argv(self) -> list[str]:
        cfg = self.config
        # -P: nothing from the working directory, where another user may have put a `farm/`
        argv = python_module("farm.server")
        if cfg.tcp:  # names the port in the server's process title
            argv += ["--port", str(cfg.tcp[1])]
        # --flag=VALUE for what the config chooses: a pool's function may start with "-"
        # (the config allows it), which argparse read as a flag, and the server never started.
        argv += [f"--listen={addr}" for addr in cfg.listen]
        argv += [f"--store={cfg.store}", "--job-retries", str(cfg.job_retries)]
        argv += ["--tcp-admin", cfg.tcp_admin, *cfg.flags]
        argv += ["--hints", "config"]  # its errors name [server] keys, not flags
        for function in sorted(set(self.pool_functions())):
            argv += [f"--pool-function={exec_text(function)}"]  # read back as its UTF-8
        if self.log_format != "text":
            argv += ["--log-format", self.log_format]
        # If the supervisor is killed, the server stops too (keeping its stored jobs); while
        # it lives, it stops the server itself, after the workers' drain (--supervised).
        return argv + ["--parent-pid", str(os.getpid()), "--supervised"]

    def spawn(self) -> None:
        self.prepare_paths()
        self.close_progress()
        progress, writer = os.pipe()
        os.set_inheritable(writer, True)  # the one descriptor the server keeps of ours
        os.set_blocking(progress, False)  # read on each turn of the loop, never waited on
        self.named = frozenset(self.pool_functions())  # as argv() names them
        self.naming_failures = 0
        argv = [*self.argv(), "--progress-fd", str(writer)]
        try:
            # SIGTERM with the supervisor: the server stops gracefully, its store kept. SIGTTOU
            # ignored: its group is a background one on `farm up`'s terminal (`stty tostop`).
            # SIGUSR1, our stop, blocked until it handles it (process.take_early_stop).
            tty, stop = (signal.SIGTTOU,), (signal.SIGUSR1,)
            self.pid = spawn(
                argv, self.env, death_signal=signal.SIGTERM, keep=[writer], ignore=tty, block=stop
            )
        except OSError as e:
            os.close(progress)
            log.error("cannot start the job server: %s", e)
            self.failed(time.monotonic(), boot=True)
            return
        finally:
            os.close(writer)  # the server's end: its close (or death) is our EOF
        self.progress_fd = progress
        self.started, self.ready = time.monotonic(), False
        log.info("job server starting (pid %d)", self.pid)

    def name_new_functions(self, now: float) -> None:
        """Tell the running server the functions of pools a reload added (the farm-only admin
        ``poolfunctions``; --pool-function named those of its start), so that its metrics
        label their jobs by name before their workers register, not under ``other``. Only
        on its Unix socket, where the server takes it from its own user alone: on TCP any
        local user could name functions to be labelled first."""
        if not self.ready or not self.config.unix or now < self.name_after:
            return
        new = sorted(set(self.pool_functions()) - self.named)
        for line in named_lines("poolfunctions", new):
            try:
                reply = admin_query(f"unix:{self.config.unix}", line, timeout=NAMING_TIMEOUT)
            except (OSError, ValueError) as e:  # busy, or restarting: its argv names them then
                self.naming_failures += 1
                self.name_after = now + NAMING_RETRY
                log.log(
                    logging.WARNING if self.naming_failures == NAMING_WARN_AFTER else logging.DEBUG,
                    "admin poolfunctions unanswered (%d in a row: %s): the jobs of functions a"
                    ' reload added count as function="other" in the server\'s metrics until'
                    " their workers register; asking again in %gs",
                    self.naming_failures,
                    e,
                    NAMING_RETRY,
                )
                return
            if reply.strip() != "OK":  # not asked again: it would refuse again
                log.warning(
                    "the job server refused to label the pools' functions: %s", reply.strip()
                )
        self.named |= frozenset(new)
        self.naming_failures = 0

    def prepare_paths(self) -> None:
        """Create the directories of the Unix socket and the store (no root needed)."""
        paths = [self.config.unix] if self.config.unix else []
        if self.config.store != "none":
            paths.append(self.config.store)
            self.make_state_dir()
        for path in paths:
            try:
                make_dirs(os.path.dirname(path), 0o750)
            except OSError as e:
                log.warning("cannot create %s: %s", os.path.dirname(path), e)

    def make_state_dir(self) -> None:
        """The state directory made as ``state_dir(make=True)`` makes it, where the store is
        the default one in it: the config chose it without making anything (`farm check`
        too), and make_dirs below would take a /tmp/.local another user made first."""
        planned = os.path.dirname(self.config.store)
        try:
            if planned != str(state_dir()):
                return  # a store named in the config: not the state directory's
        except NoStateDirectory:
            return
        try:
            if planned == str(state_dir(make=True)):
                return
            why = "another user made a part of it first"
        except NoStateDirectory as exc:
            why = str(exc)
        log.warning("the state directory %s cannot be used once made: %s", planned, why)

    def read_progress(self) -> None:
        """Note (``progressed_at``) what the replay wrote since the last turn."""
        while self.progress_fd >= 0:
            try:
                chunk = os.read(self.progress_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:  # replayed (or dead): nothing more comes
                self.close_progress()
                return
            self.progressed_at = time.monotonic()

    def close_progress(self) -> None:
        if self.progress_fd >= 0:
            os.close(self.progress_fd)
            self.progress_fd = -1

    def exited(self, status: int, *, farm_stops: bool = False) -> None:
        """Its end, said; ``farm_stops``: the farm drains its workers (nothing restarts)."""
        self.close_progress()
        now = time.monotonic()
        if self.stopping:
            log.info("job server (pid %d) %s", self.pid, describe_exit(status))
            self.pid = 0
            return
        if farm_stops:  # dead during the workers' drain: an end unasked, not restarted
            log.warning(
                "job server (pid %d) %s; not restarted: the farm stops",
                self.pid,
                describe_exit(status),
            )
            self.pid, self.ready = 0, False
            return
        self.last_exit = describe_exit(status)
        if not self.ever_ready:  # it never listened: the supervisor stops (no restart)
            log.info("job server (pid %d) %s before it listened", self.pid, self.last_exit)
            self.pid, self.ready = 0, False
            return
        self.lived(now - self.started)
        self.restarts += 1
        delay = self.failed(now)
        log.warning(
            "job server (pid %d) %s; restarting %s",
            self.pid,
            describe_exit(status),
            "now" if delay == 0 else f"in {delay:g}s",
        )
        self.pid, self.ready = 0, False

    def answered(self, now: float) -> None:
        """It answered ``getpid``: it serves, workers may start."""
        self.ready = self.ever_ready = True
        self.ready_at = now

    def serving_since(self) -> float:
        """When the server that serves now answered (``answered``); infinity while none
        does. A command worker's job in hand that ``peers`` listed before it was listed by a
        server found going away (``ending``) or gone since: it tells nothing of its end."""
        return self.ready_at if self.ready else math.inf

    def lost_by(self, started: float, now: float) -> bool:
        """Whether a worker started at ``started`` that ends ``now`` ran when this server
        last died, and ends while it is not back or within ``LOST_WINDOW`` of its return:
        a command worker may end of that (PHP's ``while ($w->work());`` does). Workers
        start only once the server answers, so one that ran while it does not outlived a
        death; the supervisor reaps the server's end before its workers' (Supervisor.
        reap_workers), and a worker's end that comes first asks whether it is ``ending``
        (Lifecycle.worker_exited), so one that saw its connection close first is judged by
        it too."""
        if not self.ever_ready or self.stopping:
            return False
        if not self.pid or not self.ready:
            return True
        return started < self.started and now - self.ready_at <= LOST_WINDOW

    def refuses(self) -> bool:
        """Whether our server, counted up, refuses connections at every address it listens
        on: it is going away. Its stop (SIGINT, a graceful SIGUSR1) closes its listeners
        before its connections, and a kill's descriptors close with its end, so a worker
        that saw its connection close first finds the listeners shut too, while the
        server's own end is not reaped yet. Every address, not one: a Unix socket whose
        path another process removed refuses while the TCP listener serves on. A bare
        connect each, bounded by PROBE_WAIT so the loop does not wait on it (a Unix
        socket's or this host's answer is at once), and only a refusal counts: a full
        backlog's timeout is a live server's."""
        for where in sorted(map(connectable, self.config.listen), key=lambda a: a.kind != "unix"):
            try:
                if where.kind == "unix":
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        probe.settimeout(PROBE_WAIT)
                        probe.connect(where.path)
                else:
                    socket.create_connection((where.host, where.port), PROBE_WAIT).close()
            except (ConnectionRefusedError, FileNotFoundError):
                continue
            except OSError:  # a timeout, or what says nothing of its end: the old verdict
                return False
            return False
        return True

    def ending(self) -> int | None:
        """Asked when a command worker's end may answer this server's loss while it counts
        up (``lost_by`` would judge a crash): whether it is in fact going away. Its end's wait
        status when it has ended (reaped here: the caller handles it as the reap would);
        else, where it ``refuses`` connections, it is counted down (``ready``), as its end
        would, so workers wait for the next server rather than crash-loop against this one,
        which the reap restarts as usual. Asked now, not later: a verdict deferred holds the
        slot, and its end's log line, for a server whose stop may take its drain's seconds;
        one look at its pid and its listener is bounded (``PROBE_WAIT``) and rare."""
        if self.stopping or not self.pid:  # the farm stops it: no worker's end is its loss
            return None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid = status = 0
        if pid:
            return status
        if self.refuses():
            log.info("job server (pid %d) no longer accepts connections: it stops", self.pid)
            self.ready = False
        return None

    def admin_address(self) -> str | None:
        """Where to ask this server admin questions: its Unix socket when it has one (no
        TCP admin restrictions apply there), else its first listen address; None if none."""
        if not self.pid or not self.ready:
            return None
        if self.config.unix:
            return f"unix:{self.config.unix}"
        return str(connectable(self.config.listen[0]))

    def accepts(self) -> bool:
        """Whether our server answers on its Unix socket (else its first listen address).

        Asked with the admin ``getpid``: a connection alone could be accepted
        by another process holding the port, and the workers must not be
        started against that. The Unix socket first: every local user may hold the
        TCP port's connections, but not the socket's.
        """
        listen = self.config.listen
        where = next((a for a in listen if a.startswith("unix:")), listen[0])
        try:
            reply = admin_query(str(connectable(where)), "getpid", timeout=0.2)
        except (OSError, ValueError):
            return False
        return reply.strip() == f"OK {self.pid}"

    def stop(self) -> None:
        """Graceful (SIGUSR1): stop accepting, exit once no job runs; ``kill`` if it lingers."""
        self.stopping = True
        self._send(signal.SIGUSR1)

    def kill(self) -> None:
        self._send(signal.SIGKILL)

    def _send(self, sig: signal.Signals) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):  # ended, not reaped yet
                os.kill(self.pid, sig)
