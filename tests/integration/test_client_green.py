"""A blocking client in a program whose stdlib is green (gevent's or eventlet's
``monkey.patch_all()``: gunicorn's gevent workers, Celery's gevent pool): its sockets wait
in the hub where the system says EAGAIN, whatever flags a read is given."""

from __future__ import annotations

import importlib.util
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from farm.net import recv_now, send_now
from tests.helpers import ROOT
from tests.helpers.servers import Server
from tests.helpers.serving import serving

WAIT = 5.0


class GreenLike:
    """A socket as gevent's and eventlet's are: no ``_socket.socket``, a real one inside,
    and a read or send that would block waits for its ``timeout`` (None: for ever; here
    ``WAIT``, then a failure) flags or none, unless the timeout is 0."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.timeout: float | None = None
        sock.setblocking(False)

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, size: int, flags: int = 0) -> bytes:
        return self._green(lambda: self._sock.recv(size, flags), read=True)

    def send(self, data: bytes, flags: int = 0) -> int:
        return self._green(lambda: self._sock.send(data, flags), read=False)

    def _green(self, io, read: bool):  # type: ignore[no-untyped-def]
        while True:
            try:
                return io()
            except BlockingIOError:
                if self.timeout == 0:
                    raise
            waits = ([self._sock], [], []) if read else ([], [self._sock], [])
            if not any(select.select(*waits, WAIT)):
                raise AssertionError(f"waited {WAIT} s: a read or send meant not to wait")


@pytest.fixture
def green_pair() -> Iterator[tuple[GreenLike, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield GreenLike(ours), theirs


def test_recv_now_does_not_wait_on_a_green_socket(green_pair) -> None:
    green, peer = green_pair
    with pytest.raises(BlockingIOError):  # it waited for a next reply that never came
        recv_now(green)  # type: ignore[arg-type]
    peer.sendall(b"late reply")
    assert recv_now(green) == b"late reply"  # type: ignore[arg-type]
    assert green.gettimeout() is None  # as it was: the client's later waits are its own


def test_send_now_does_not_wait_on_a_green_socket(green_pair) -> None:
    green, _peer = green_pair
    sent = sum(iter(lambda: send_now(green, b"x" * 65536), 0))  # type: ignore[arg-type]
    assert sent > 0  # until the buffers are full, then 0: not a wait for the peer to read
    assert green.gettimeout() is None


GEVENT_CALLS = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import sys, gevent, farm
    client = farm.Client(sys.argv[1])
    try:
        with gevent.Timeout(0.2):  # a request's deadline, raised into the waiting call
            client.call("sleepy", "1", timeout=20)
    except gevent.Timeout:
        pass
    for n in range(3):  # a reused connection: it catches up first, without waiting
        print(client.call("sleepy", str(n / 10), timeout=20).decode())
    """
)


def _sleepy(job) -> bytes:  # type: ignore[no-untyped-def]
    import time

    time.sleep(float(job.data))
    return job.data


def test_a_gevent_programs_client_calls_again(farm_server: Server) -> None:
    if importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed (a green stdlib's client is tested with it)")
    with serving(farm_server.addr, {"sleepy": _sleepy}):
        done = subprocess.run(
            [sys.executable, "-c", GEVENT_CALLS, farm_server.addr],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.0", "0.1", "0.2"]
