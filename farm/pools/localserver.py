"""The supervisor's local job server process: start it, see it accept, restart it.

The server is ``python -m farm.server`` with the flags of [server]; it sets its
own title (``farm: server :4730``). When it dies it is restarted with the same
backoff as a worker slot; workers reconnect by themselves meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

from farm.config import ServerConfig
from farm.pools.slots import HEALTHY_AFTER, crash_delay, describe_exit

__all__ = ["LocalServer"]

log = logging.getLogger("farm.supervisor")


class LocalServer:
    """One job server child process and its restart history."""

    def __init__(self, config: ServerConfig, env: dict[str, str]) -> None:
        self.config = config
        self.env = env
        self.pid = 0
        self.started = 0.0
        self.ready = False
        self.ever_ready = False  # a server that never listened will not by retrying
        self.failures = 0
        self.restarts = 0
        self.next_start = 0.0
        self.stopping = False

    def argv(self) -> list[str]:
        cfg = self.config
        tcp = cfg.tcp
        argv = [sys.executable, "-m", "farm.server", "--port", str(tcp[1] if tcp else 4730)]
        for addr in cfg.listen:
            argv += ["--listen", addr]
        argv += ["--store", cfg.store, "--job-retries", str(cfg.job_retries)]
        # If the supervisor is killed, the server stops too (keeping its stored jobs).
        return argv + ["--parent-pid", str(os.getpid())]

    def spawn(self) -> None:
        self.prepare_paths()
        try:
            self.pid = os.posix_spawn(sys.executable, self.argv(), self.env, setpgroup=0)
        except OSError as e:
            log.error("cannot start the job server: %s", e)
            self.failures += 1
            self.next_start = time.monotonic() + max(1.0, crash_delay(self.failures))
            return
        self.started, self.ready = time.monotonic(), False
        log.info("job server starting (pid %d)", self.pid)

    def prepare_paths(self) -> None:
        """Create the directories of the Unix socket and the store (no root needed)."""
        paths = [self.config.unix] if self.config.unix else []
        if self.config.store != "none":
            paths.append(self.config.store)
        for path in paths:
            try:
                os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
            except OSError as e:
                log.warning("cannot create %s: %s", os.path.dirname(path), e)

    def exited(self, status: int) -> None:
        now = time.monotonic()
        if self.stopping:
            log.info("job server (pid %d) %s", self.pid, describe_exit(status))
            self.pid = 0
            return
        if now - self.started >= HEALTHY_AFTER:
            self.failures = 0
        self.failures += 1
        self.restarts += 1
        delay = crash_delay(self.failures)
        log.warning(
            "job server (pid %d) %s; restarting %s",
            self.pid,
            describe_exit(status),
            "now" if delay == 0 else f"in {delay:g}s",
        )
        self.pid, self.ready, self.next_start = 0, False, now + delay

    def accepts(self) -> bool:
        """Whether our server answers on its first listen address.

        Asked with the admin ``getpid``: a connection alone could be accepted
        by another process holding the port, and the workers must not be
        started against that.
        """
        addr = self.config.listen[0]
        try:
            if addr.startswith("unix:"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(0.2)
                sock.connect(addr[5:])
            else:
                host, port = self.config.tcp or ("127.0.0.1", 4730)
                host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
                sock = socket.create_connection((host, port), timeout=0.2)
            with sock:
                sock.sendall(b"getpid\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    data = sock.recv(64)
                    if not data:
                        break
                    reply += data
        except OSError:
            return False
        return reply.strip() == f"OK {self.pid}".encode()

    def stop(self) -> None:
        """Graceful (SIGUSR1): stop accepting, exit once no job runs; ``kill`` if it lingers."""
        self.stopping = True
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
