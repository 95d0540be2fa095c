"""A real `farm up` for benchmarks: one pool, a throwaway config, key and sockets, then gone.

``FarmService(tmp, {"farm.python": ("farm.executor.call:run_call", 2)})`` writes
``tmp/farm.toml`` that sets only addresses (a free TCP port, ``tmp/gearman.sock``,
``tmp/control.sock``), ``store = "none"`` and the given pools — a ``[functions]``
table replaces the built-in default pools, so nothing else runs. Entered, it
starts ``python -m farm.cli up --config tmp/farm.toml`` from the repository root
(``PYTHONPATH`` = the root, so workers import ``bench``) in its own session (a
Ctrl-C in the terminal reaches the benchmark, which then stops the farm), with
``$FARM_KEY_FILE`` = ``tmp/executor.key`` (the supervisor creates it), and waits
until the control socket's process table (what ``farm ps --json`` prints) shows
the server ready and every worker idle. Leaving it sends SIGTERM and waits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from farm.executor.signing import KEY_ENV  # noqa: E402
from farm.pools.control import ControlUnavailable, request  # noqa: E402

__all__ = ["FarmService", "Processes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Processes:
    """The farm's processes at one moment, from its `farm ps` table."""

    supervisor: int
    server: int
    workers: dict[int, int]  # pid -> jobs done so far


class FarmService:
    """`farm up` on a temp config; a context manager that always stops it."""

    def __init__(self, tmp: Path, pools: dict[str, tuple[str, int]], start_timeout: float = 60):
        self.tmp = tmp
        self.pools = pools
        self.start_timeout = start_timeout
        self.port = free_port()
        self.unix = str(tmp / "gearman.sock")
        self.control = str(tmp / "control.sock")
        self.key_file = tmp / "executor.key"
        self.config = tmp / "farm.toml"
        self.log_path = tmp / "farm.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            "[server]",
            f'listen = ["{self.tcp}", "unix:{self.unix}"]',
            'store = "none"',
            "",
            "[supervisor]",
            f'control = "{self.control}"',
        ]
        for name, (target, workers) in self.pools.items():
            lines += ["", f'[functions."{name}"]', f'target = "{target}"', f"workers = {workers}"]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> FarmService:
        self.config.write_text(self.config_text())
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "FARM_CONFIG")}
        env[KEY_ENV] = str(self.key_file)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log = open(self.log_path, "wb")  # closed in stop()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "farm.cli", "up", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def ps(self) -> list[dict[str, Any]]:
        """The supervisor's process table: the rows `farm ps --json` prints."""
        rows: list[dict[str, Any]] = request(self.control, {"cmd": "ps"}, timeout=10)["processes"]
        return rows

    def processes(self) -> Processes:
        rows = self.ps()
        (sup,) = (r["pid"] for r in rows if r["slot"] is None and r["function"] == "supervisor")
        (srv,) = (r["pid"] for r in rows if r["slot"] is None and r["function"] == "server")
        workers = {r["pid"]: r["jobs"] for r in rows if r["slot"] is not None and r["pid"]}
        return Processes(sup, srv, workers)

    def settled(self) -> bool:
        """The server ready and exactly the configured workers, all idle (no other pools)."""
        try:
            rows = self.ps()
        except ControlUnavailable:
            return False
        if not any(r["function"] == "server" and r["state"] == "ready" for r in rows):
            return False
        workers = [r for r in rows if r["slot"] is not None]
        for name, (_, count) in self.pools.items():
            mine = [r for r in workers if r["function"] == name]
            if len(mine) != count or any(r["state"] != "idle" for r in mine):
                return False
        return len(workers) == sum(count for _, count in self.pools.values())

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while not self.settled():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited {self.proc.returncode}" if self.proc.returncode is not None else ""
                raise RuntimeError(
                    f"farm up did not get ready ({why or 'timeout'}); log:\n{self.read_log()}"
                )
            time.sleep(0.1)  # polling another process's start-up
        if not self.key_file.exists():
            raise RuntimeError(f"the supervisor made no key at {self.key_file}")

    def read_log(self) -> str:
        if self.log is not None and not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM and wait; whatever happens, no process of the farm is left behind."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass
        if self.log is not None:
            self.log.close()
