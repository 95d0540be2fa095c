"""A real `farm up` for tests: a config in a temp dir, a notify socket, helpers to wait on it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from farm.pools.control import ControlUnavailable, request
from tests.helpers import ROOT
from tests.helpers.servers import free_ports
from tests.helpers.waiting import wait_for

#: Put before the supervisor's code: each /proc path it opens, a line in the file named.
#: An audit hook sees every open(), psutil's included; the file is opened before the hook.
RECORD_PROC_OPENS = """
import os, sys
_record = os.open({path!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
def _hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith("/proc/"):
        os.write(_record, args[0].encode() + b"\\n")
sys.addaudithook(_hook)
"""


def farm_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `farm` CLI as a user would (its own process), capturing what it prints."""
    return subprocess.run(
        [sys.executable, "-c", "from farm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class FarmUp:
    """`farm up -c <tmp>/farm.toml` with $NOTIFY_SOCKET bound by the test."""

    def __init__(
        self,
        tmp: Path,
        functions: str,
        *,
        extra_env: dict[str, str] | None = None,
        start: bool = True,
        supervisor: str = "",
        metrics: bool = True,
        cwd: Path | None = None,
        store: Path | None = None,
        job_retries: int = 3,
        grace: float = 10,
        own_group: bool = False,
    ) -> None:
        self.tmp = tmp
        # Where `farm up` is started (default: tmp). The supervisor is then started as the
        # installed `farm` script starts it, which does not import from its working directory.
        self.cwd = cwd
        self.supervisor = supervisor  # more [supervisor] lines, e.g. "ready_wait = 2"
        self.metrics = metrics  # False: `metrics = "off"`, no listener at all
        self.store = "none" if store is None else str(store)  # [server] store
        self.job_retries = job_retries  # [server] job_retries
        self.grace = grace  # [supervisor] graceful_timeout
        self.port, self.metrics_port = free_ports(2)
        self.control = str(tmp / "control.sock")
        self.config = tmp / "farm.toml"
        self.unix = tmp / "gearman.sock"  # workers connect here (farm.* pools must)
        self.write_config(functions)
        self.log_path = tmp / "farm.log"
        self.notify_path = str(tmp / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.messages: list[str] = []
        self.env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONPATH=f"{tmp}:{ROOT}")
        self.env.update(extra_env or {})
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.config_arg = str(self.config)  # as `farm up -c` is given it (cwd: tmp)
        self.up_args: list[str] = []  # more of `farm up`'s flags, e.g. --log-format json
        # The supervisor's interpreter's own flags (-s, -I), and what it runs: under -I,
        # which ignores PYTHONPATH, the code puts this checkout on sys.path itself.
        self.python_flags: list[str] = []
        self.code = "from farm.cli import main; main()"
        self.new_session = False  # True: started as `setsid farm up` (no terminal's job)
        # True: a process group of its own, whose parent (the test) is of its session, as a
        # shell with job control starts it: a terminal's job, however pytest was started.
        self.own_group = own_group
        if start:
            self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *(["-P"] if self.cwd is not None else []),
                *self.python_flags,
                "-c",
                self.code,
                "up",
                "-c",
                self.config_arg,
                *self.up_args,
            ],
            cwd=self.cwd or self.tmp,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
            process_group=0 if self.own_group else None,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_config(self, functions: str) -> None:
        metrics = f"127.0.0.1:{self.metrics_port}" if self.metrics else "off"
        self.config.write_text(
            textwrap.dedent(f"""
            [server]
            listen = ["127.0.0.1:{self.port}", "unix:{self.unix}"]
            store = "{self.store}"
            job_retries = {self.job_retries}

            [supervisor]
            control = "{self.control}"
            graceful_timeout = {self.grace:g}
            metrics = "{metrics}"
            """)
            + textwrap.dedent(self.supervisor).strip()
            + "\n"
            + textwrap.dedent(functions)
        )

    def expect_notify(self, field: str, timeout: float = 15.0) -> list[str]:
        """Read notify datagrams until one carries ``field`` (e.g. "READY=1")."""
        return self.expect_notified(field, lambda: field in self.messages, timeout)

    def expect_status(self, start: str, timeout: float = 15.0) -> str:
        """Read notify datagrams until a STATUS= begins with ``start``; that status."""

        def found() -> str | None:
            return next((m for m in self.messages if m.startswith(f"STATUS={start}")), None)

        self.expect_notified(f"STATUS={start}...", lambda: found() is not None, timeout)
        return str(found())[len("STATUS=") :]

    def expect_notified(
        self, field: str, seen: Callable[[], bool], timeout: float = 15.0
    ) -> list[str]:
        deadline = time.monotonic() + timeout
        while not seen():
            left = deadline - time.monotonic()
            exited = self.proc.poll() is not None  # datagrams it sent before exiting still queue
            self.notify.settimeout(0 if exited else max(0.0, min(left, 0.5)))
            try:
                data = self.notify.recv(4096)
            except (TimeoutError, BlockingIOError):
                if exited or left <= 0:
                    log = self.read_log()
                    raise AssertionError(f"no {field} from the supervisor; log:\n{log}") from None
                continue
            self.messages.extend(data.decode().split("\n"))
        return self.messages

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        return request(self.control, message, timeout=10)

    def ps(self) -> list[dict[str, Any]]:
        return self.ask({"cmd": "ps"})["processes"]

    def server_backing_off(self, junk: bytes | Path) -> None:
        """Put the job server into its restart backoff: the store (``store=``) replaced by
        ``junk`` (the running server keeps its open file; a new one cannot start), its WAL
        and shm files gone (their pages would stand in for it), the server killed; returns
        once it was restarted twice. ``junk`` as a path: that file, moved in (a farm store
        the test holds open, which a new server finds in use and `farm check` passes)."""
        (server,) = [r for r in self.ps() if r["function"] == "server"]
        store = Path(self.store)
        junk_file = junk if isinstance(junk, Path) else store.with_name("junk")
        if not isinstance(junk, Path):
            junk_file.write_bytes(junk)
        junk_file.replace(store)
        for side in ("-wal", "-shm"):
            store.with_name(store.name + side).unlink(missing_ok=True)
        os.kill(server["pid"], signal.SIGKILL)
        wait_for(
            "the server backing off",
            lambda: [r for r in self.ps() if r["function"] == "server" and r["restarts"] >= 2],
            timeout=30,
        )

    def kill_server(self) -> int:
        """The job server killed -9 (an OOM kill, a crash), and gone: its sockets closed (a
        worker's answer written before that still lands in them, and is lost unseen); its
        pid. The supervisor starts another (at once the first time, then with a backoff)."""
        (server,) = [r["pid"] for r in self.ps() if r["function"] == "server"]
        os.kill(server, signal.SIGKILL)
        wait_for("the killed job server to be gone", lambda: _gone(server), timeout=10)
        return server

    def workers(self, function: str | None = None, state: str | None = None) -> list[dict]:
        return [
            r
            for r in self.ps()
            if r["slot"] is not None
            and (function is None or r["function"] == function)
            and (state is None or r["state"] == state)
        ]

    def wait_idle(self, counts: dict[str, int], timeout: float = 15.0) -> list[dict]:
        """Until each function has exactly ``count`` idle workers and nothing else of it."""

        def settled() -> list[dict] | None:
            rows = self.workers()
            for name, n in counts.items():
                mine = [r for r in rows if r["function"] == name]
                if len(mine) != n or any(r["state"] != "idle" for r in mine):
                    return None
            return rows

        return wait_for(f"idle workers {counts}", settled, timeout)

    def read_log(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM and wait; whatever happens, no process is left behind."""
        if self.proc.poll() is None:
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for child in children:  # a supervisor that failed its test must not leak processes
                try:
                    child.kill()
                except psutil.Error:
                    pass
        self.log.close()
        self.notify.close()
        return self.proc.returncode

    def alive(self) -> bool:
        try:
            self.ask({"cmd": "ping"})
        except ControlUnavailable:
            return False
        return True


def _gone(pid: int) -> bool:
    """Reaped: its files are closed. Not a zombie: the first thread of a process killed
    with threads of its own is one while the others still hold its files open."""
    return not psutil.pid_exists(pid)


#: The Executor's pool as most executor tests run it: two workers.
EXECUTOR_POOL = """
[functions."farm.python"]
target = "farm.executor.call:run_call"
workers = 2
"""


@contextlib.contextmanager
def executor_farm(
    tmp: Path, pools: str = EXECUTOR_POOL, idle: dict[str, int] | None = None
) -> Iterator[tuple[FarmUp, Path]]:
    """`farm up` with ``pools`` and the Executor's key at ``tmp/state/executor.key``, ready
    and with ``idle`` workers (by pool; default: the two of EXECUTOR_POOL) waiting; yields
    it and the key's path, stops it."""
    idle = {"farm.python": 2} if idle is None else idle
    key = tmp / "state" / "executor.key"
    up = FarmUp(tmp, pools, extra_env={"FARM_KEY_FILE": str(key)})
    try:
        up.expect_notify("READY=1")
        up.wait_idle(idle)
        yield up, key
    finally:
        up.stop()
