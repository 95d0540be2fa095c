"""Real job servers (farm's and gearmand) on free ports, and how to reach them."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import psutil
import pytest

from farm.client.admin import admin_query
from tests.helpers import ROOT
from tests.helpers.waiting import wait_for

GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
REQUIRE_INTEROP = os.environ.get("FARM_REQUIRE_INTEROP") == "1"


def need(tool: str) -> str:
    """The path of an interop tool; a skip with the reason, or a failure where CI requires it."""
    path = shutil.which(tool) or (tool if os.path.exists(tool) else None)
    if path:
        return path
    skip_or_fail(f"{tool} is not installed (make deps-test installs it)")


def php() -> str:
    """The path of a PHP with the gearman extension (PHP's GearmanWorker); else as ``need``."""
    path = need("php")
    probe = subprocess.run([path, "-r", "exit(class_exists('GearmanWorker') ? 0 : 1);"])
    if probe.returncode != 0:
        need("php-gearman-extension")
    return path


@contextmanager
def quiet_process(*cmd: str) -> Iterator[subprocess.Popen[bytes]]:
    """A peer program (a PHP or gearman worker or client) run for the block, its output
    dropped; killed when the block ends, however it ends."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def skip_or_fail(why: str) -> NoReturn:
    """Skip with ``why``; where CI requires every interop test (FARM_REQUIRE_INTEROP), fail."""
    if REQUIRE_INTEROP:
        pytest.fail(why)
    pytest.skip(why)


def stop_process(pid: int) -> None:
    """SIGSTOP (a hung server: its kernel still accepts, nothing answers), and wait until it
    has taken in every thread: the signal lands a little after kill() returns, and a thread
    of gearmand's still running in that moment answered a grab sent after the kill."""
    os.kill(pid, signal.SIGSTOP)
    wait_for("the server to stop", lambda: _all_threads_stopped(pid))


def _all_threads_stopped(pid: int) -> bool:
    threads = psutil.Process(pid).threads()
    return all(psutil.Process(t.id).status() == psutil.STATUS_STOPPED for t in threads)


#: Where the ports handed out in this run are claimed, one file each: set (by conftest.py)
#: for a run split between pytest-xdist's workers. Each worker's free_port() binds port 0
#: and lets it go, so two workers could be handed the same number, and the second farm
#: would fail to listen. Unset (a run in one process), nothing is claimed, as before.
PORT_CLAIMS = "FARM_TEST_PORT_CLAIMS"


def _claimed(port: int) -> bool:
    """Whether ``port`` is now this process's alone to hand out in this run (never handed
    out before in it, by any worker): made so by an O_EXCL file named for it."""
    folder = os.environ.get(PORT_CLAIMS)
    if not folder:
        return True
    try:
        os.close(os.open(os.path.join(folder, str(port)), os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different free ports on ``host``: held together while chosen, as two
    free_port() calls in a row may both get the one the first let go (a farm's server and
    metrics port were once the same, and `farm up` refused the config); under xdist, each
    one claimed for this run (above), so that no other worker is handed it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            if len(socks) >= count + 1000:
                raise RuntimeError(f"no free port on {host} that this run had not handed out")
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)  # held (a port another worker claimed too), so not offered again
            s.bind((host, 0))
            port = s.getsockname()[1]
            if host == "127.0.0.1" and not _free_on_ipv6_loopback(port, socks):
                continue  # a farm server there holds [::1] at its port too (farm.loopback)
            if _claimed(port):
                ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


def ipv6_loopback_problem() -> str | None:
    """Why a server cannot listen on [::1] here, or None when it can."""
    if not socket.has_ipv6:
        return "this Python has no IPv6 support"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind the IPv6 loopback [::1]: {exc}"
    return None


def _free_on_ipv6_loopback(port: int, held: list[socket.socket]) -> bool:
    """Whether [::1] has ``port`` free too (held in ``held`` while ports are chosen); True
    where the host has no IPv6 loopback. A port free on 127.0.0.1 may be a [::1]
    connection's own, and a farm server given it then refused to start."""
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return True
    held.append(s)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::1", port))
    except OSError as exc:
        return exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    return True


def connect(addr: str, timeout: float = 10) -> socket.socket:
    """A connected socket to "host:port" or "unix:/path", with TCP_NODELAY on TCP."""
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr[5:])
        return s
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def wait_connectable(addr: str, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    """Until ``addr`` accepts a connection; RuntimeError at once if ``proc`` exits first."""

    def accepts() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before accepting")
        try:
            connect(addr).close()
        except OSError:
            return False
        return True

    wait_for(f"{addr} to accept connections", accepts, timeout)


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


def _launch(
    kind: str,
    make_cmd: Callable[[int], list[str]],
    port: int | None,
    verify: bool = True,
    **popen: Any,
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
        except (RuntimeError, OSError, AssertionError):
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if port:
            break
    raise RuntimeError(f"{kind} did not start on a free port")


def _server_pid(addr: str) -> int:
    reply = admin_query(addr, "getpid", timeout=10)
    return int(reply.split()[1]) if reply.startswith("OK ") else -1


def start_farm_server(*extra: str, port: int | None = None, unix: str | None = None) -> Server:
    """`python -m farm.server --store none` plus ``extra``, answering on 127.0.0.1."""

    def cmd(chosen: int) -> list[str]:
        argv = [sys.executable, "-m", "farm.server", "--port", str(chosen), "--store", "none"]
        return argv + list(extra) + (["--unix", unix] if unix else [])

    proc, chosen = _launch("farm server", cmd, port, "--tls-cert" not in extra, cwd=ROOT)

    def running(then: str) -> bool:  # a server that exited will not listen: no 10 s wait
        if proc.poll() is not None:
            raise AssertionError(f"the server exited (status {proc.returncode}) before {then}")
        return True

    # The TCP port answers first: the server opens its Unix socket, then --metrics and its
    # [::1] twin, after it (farm/server/app.py:81-124); a test that used them at once was
    # refused. Neither is probed by a connection, which the server would count.
    try:  # a failed wait must not leave the server running, unowned, for the session
        if unix:
            wait_for("the Unix socket", lambda: running("its Unix socket") and _unix_listens(unix))
        if "--metrics" in extra[:-1]:
            host, _, at = extra[extra.index("--metrics") + 1].rpartition(":")
            wait_for(
                "the --metrics listener",
                lambda: running("--metrics") and _listens_as(proc.pid, int(at), chosen, host),
            )
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Server("farm", f"127.0.0.1:{chosen}", proc, chosen, unix, list(extra))


def _unix_listens(path: str) -> bool:
    """Whether a socket bound at ``path`` listens: bind() makes the file before listen(), and
    psutil says no state for Unix sockets, so the kernel's own table is read for the
    listening flag (__SO_ACCEPTCON). Not by connecting, which the server would count."""
    with open("/proc/net/unix") as table:
        rows = [line.split(maxsplit=7) for line in table.readlines()[1:]]
    return any(len(r) == 8 and r[7].rstrip("\n") == path and int(r[3], 16) & 0x10000 for r in rows)


def _listens_as(pid: int, port: int, like: int, host: str) -> bool:
    """Whether ``pid`` listens at TCP ``port``, on every address it listens on at ``like``
    when ``host`` is 127.0.0.1 (its [::1] twin too). Read from the process's sockets, not by
    connecting: a connection would take one of the endpoint's places."""
    listening: dict[int, set[str]] = {port: set(), like: set()}
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port in listening:
            listening[conn.laddr.port].add(conn.laddr.ip)
    mine = listening[port]
    return bool(mine) and (host != "127.0.0.1" or mine >= listening[like])


@contextmanager
def unix_farm_server(
    *extra: str | Callable[[Path], str], prefix: str = "farm-unix-", mode: int | None = None
) -> Iterator[Server]:
    """A farm server also on a Unix socket in a directory of its own (pytest's temp tree is
    closed to other users; ``mode`` opens the directory), removed after; an ``extra`` that
    is a callable is given that directory (a log file there)."""
    sockdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if mode is not None:
            os.chmod(sockdir, mode)
        unix = str(sockdir / "gearman.sock")
        flags = [flag(sockdir) if callable(flag) else flag for flag in extra]
        srv = start_farm_server(*flags, unix=unix)
        try:
            wait_for("the Unix socket", lambda: os.path.exists(unix))
            yield srv
        finally:
            srv.stop()
    finally:  # also when the server did not start
        shutil.rmtree(sockdir, ignore_errors=True)


def start_gearmand(*extra: str, port: int | None = None) -> Server:
    """gearmand 1.1 on 127.0.0.1 (skipped, or failed under FARM_REQUIRE_INTEROP, if absent)."""
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


def start_like(server: Server, port: int | None = None) -> Server:
    """Another server of the same kind (farm or gearmand), optionally on a given port."""
    return start_farm_server(port=port) if server.kind == "farm" else start_gearmand(port=port)


def start_with_store(db: Path, port: int | None = None, args: Sequence[str] = ()) -> Server:
    """farm's server keeping background jobs in the SQLite file ``db`` (``args``: more flags)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "farm.server", "--port", str(port), "--store", str(db), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    addr = f"127.0.0.1:{port}"
    wait_connectable(addr, proc)
    return Server("farm", addr, proc, port)
