"""Shared fixtures: real servers (farm's and gearmand) on free ports, and raw-protocol peers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from farm import protocol as p

ROOT = Path(__file__).resolve().parent.parent
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
REQUIRE_INTEROP = os.environ.get("FARM_REQUIRE_INTEROP") == "1"


def need(tool: str) -> str:
    """The path of an interop tool; a skip with the reason, or a failure where CI requires it."""
    path = shutil.which(tool) or (tool if os.path.exists(tool) else None)
    if path:
        return path
    msg = f"{tool} is not installed (make deps-test installs it)"
    if REQUIRE_INTEROP:
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_connectable(addr: str, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    """Block until ``addr`` ("host:port" or "unix:/path") accepts a connection."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before accepting")
        try:
            connect(addr).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)  # readiness poll of a process we do not control
            delay = min(delay * 2, 0.1)


def connect(addr: str, timeout: float = 10) -> socket.socket:
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr[5:])
        return s
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


@dataclass
class Server:
    """A running job server process: farm's or gearmand."""

    kind: str
    addr: str
    proc: subprocess.Popen
    port: int = 0
    unix: str | None = None
    args: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _launch(  # noqa: ANN001
    kind: str, make_cmd, port: int | None, verify: bool = True, **popen
) -> tuple[subprocess.Popen, int]:
    """Start a server and wait until *it* (not another process on a reused port) answers.

    ``free_port`` can race with other processes grabbing the port; when no
    port was asked for, a lost race is retried on a fresh one.
    """
    for _attempt in range(5):
        chosen = port or free_port()
        proc = subprocess.Popen(make_cmd(chosen), **popen)
        addr = f"127.0.0.1:{chosen}"
        try:
            wait_connectable(addr, proc)
            # A TLS listener cannot answer plain admin text; there, being alive must do.
            if (_server_pid(addr) if verify else proc.pid) == proc.pid and proc.poll() is None:
                return proc, chosen
        except (RuntimeError, OSError):
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if port:
            break
    raise RuntimeError(f"{kind} did not start on a free port")


def _server_pid(addr: str) -> int:
    with connect(addr) as sock:
        sock.sendall(b"getpid\n")
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(100)
            if not data:
                break
            reply += data
    return int(reply.split()[1]) if reply.startswith(b"OK ") else -1


def start_farm_server(*extra: str, port: int | None = None, unix: str | None = None) -> Server:
    def cmd(chosen: int) -> list[str]:
        argv = [sys.executable, "-m", "farm.server", "--port", str(chosen), "--store", "none"]
        return argv + list(extra) + (["--unix", unix] if unix else [])

    proc, chosen = _launch("farm server", cmd, port, "--tls-cert" not in extra, cwd=ROOT)
    return Server("farm", f"127.0.0.1:{chosen}", proc, chosen, unix, list(extra))


def start_gearmand(*extra: str, port: int | None = None) -> Server:
    need(GEARMAND)

    def cmd(chosen: int) -> list[str]:
        return [
            GEARMAND,
            "--port",
            str(chosen),
            "--listen",
            "127.0.0.1",
            "--log-file",
            "none",
        ] + list(extra)

    proc, chosen = _launch(
        "gearmand", cmd, port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return Server("gearmand", f"127.0.0.1:{chosen}", proc, chosen, None, list(extra))


@pytest.fixture
def farm_server() -> Iterator[Server]:
    srv = start_farm_server()
    yield srv
    srv.stop()


@pytest.fixture
def gearmand() -> Iterator[Server]:
    srv = start_gearmand()
    yield srv
    srv.stop()


@pytest.fixture(params=["farm", "gearmand"])
def any_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The same test against farm's server and against gearmand."""
    srv = start_farm_server() if request.param == "farm" else start_gearmand()
    yield srv
    srv.stop()


class Peer:
    """A raw-protocol connection for tests: send packets, read packets or admin text."""

    def __init__(self, addr: str, timeout: float = 10) -> None:
        self.sock = connect(addr, timeout)
        self.decoder = p.Decoder(allow_admin=False)
        self.pending: list[p.Packet] = []

    def send(self, ptype: int, *args: bytes | str) -> None:
        raw = [a.encode() if isinstance(a, str) else a for a in args]
        self.sock.sendall(p.encode_req(ptype, *raw))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 10) -> p.Packet:
        self.sock.settimeout(timeout)
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.pending.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        return self.pending.pop(0)

    def expect(self, ptype: int, timeout: float = 10) -> p.Packet:
        pkt = self.recv(timeout)
        assert pkt.type == ptype, f"expected {p.PACKETS[ptype].name}, got {pkt.name} {pkt.args}"
        return pkt

    def nothing_within(self, seconds: float) -> bool:
        """True when no packet arrives within ``seconds`` (a bounded negative check)."""
        if self.pending:
            return False
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        if data:
            self.pending.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        return False

    def closed_within(self, seconds: float = 5) -> bool:
        """True when the server closes this connection within ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.pending.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def admin(self, command: str, timeout: float = 10) -> str:
        """Send an admin command; return the reply up to and including its end line."""
        self.sock.settimeout(timeout)
        self.sock.sendall(command.encode() + b"\r\n")
        buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return buf.decode()
            buf += data
            text = buf.decode()
            if text.startswith(("OK", "ERR")) and text.endswith("\n"):
                return text
            if text == ".\n" or text.endswith("\n.\n"):
                return text

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peer_factory() -> Iterator:
    peers: list[Peer] = []

    def make(addr: str) -> Peer:
        peer = Peer(addr)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()
