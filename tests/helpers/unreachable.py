"""Peers whose other end becomes unreachable, run in a network namespace of its own
(``unshare -n``; root): every packet to 127.0.0.1 is dropped, as when a host dies or the
network between is cut, so no FIN nor RST ever comes.

``worker`` (the default): a farm.Worker asleep on its server; prints ``noticed SECONDS``
once the worker calls the server lost (``not noticed`` if it did not within ``WITHIN``),
then ``served RESULT`` once the path is back. ``server``: a worker over TCP holds a job when
its path is cut; prints ``served RESULT SECONDS`` once the server has given the job to a
worker on its Unix socket (``not served`` if not within ``WITHIN``). ``client``: an
AsyncClient's call over TCP waits on a job a worker (on the Unix socket) holds when its path
is cut; prints ``noticed SECONDS ERROR`` once the call fails (``not noticed`` if it did not
within ``WITHIN``).

The keepalive timers are cut to seconds (``farm.net.KEEPALIVE``, the server's flags) so
that this runs in a few seconds rather than the minute and a half of the real ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import farm
from farm import net
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server
from tests.helpers.streams import call_in_thread
from tests.helpers.waiting import wait_for

WITHIN = 15.0
#: struct tcp_info: eight one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked (u32).
_UNACKED_AT = 24


def namespaces_usable() -> bool:
    """Whether this runs here: root, and a network namespace of its own to cut."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], check=False)
    return probe.returncode == 0


def in_namespace(*case: str) -> subprocess.CompletedProcess[str]:
    """This module run as a script (``case``: which scenario) in a network namespace of its
    own, its output captured: what the keepalive tests assert on."""
    return subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.helpers.unreachable", *case],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )


def _ip(command: str) -> None:
    subprocess.run(["ip", *command.split()], check=True)


def _unacked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, _UNACKED_AT)[0])


class _Lost(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "reconnecting" in record.getMessage():
            self.event.set()


def _loopback_cuttable() -> None:
    """The local routes' rule moves behind one that may drop everything to 127.0.0.1."""
    _ip("link set lo up")
    _ip("rule del pref 0 lookup local")
    _ip("rule add pref 100 lookup local")


def main() -> None:
    if sys.argv[1:] == ["server"]:
        server_side()
        return
    if sys.argv[1:] == ["client"]:
        client_side()
        return
    _loopback_cuttable()
    net.KEEPALIVE = (1, 1, 2)
    lost = _Lost()
    logging.getLogger("farm.worker").addHandler(lost)
    server = start_farm_server()
    worker = farm.Worker(server.addr)
    worker.register("reverse", lambda job: job.data[::-1])
    serving = threading.Thread(target=worker.work, daemon=True)
    serving.start()
    try:
        with farm.Client(server.addr) as client:
            assert client.call("reverse", b"abc", timeout=10) == b"cba"
        # Asleep: nothing of its own in flight (data unacknowledged is TCP's retransmission
        # timer's to give up on, minutes later, not the keepalive's).
        link = worker._servers[0]
        wait_for("the worker asleep", lambda: link.sock is not None and _unacked(link.sock) == 0)
        _ip("rule add pref 10 to 127.0.0.1 blackhole")
        began = time.monotonic()
        if lost.event.wait(WITHIN):
            print(f"noticed {time.monotonic() - began:.1f}", flush=True)
        else:
            print("not noticed", flush=True)
        _ip("rule del pref 10")
        with farm.Client(server.addr) as client:
            print("served", client.call("reverse", b"xyz", timeout=20).decode(), flush=True)
    finally:
        worker.stop()
        serving.join(10)
        server.stop()


def server_side() -> None:
    _loopback_cuttable()
    unix = tempfile.mkdtemp() + "/gearman.sock"
    timers = ["--keepalive-idle", "1", "--keepalive-interval", "1", "--keepalive-count", "2"]
    server = start_farm_server(*timers, unix=unix)
    gone = Peer(server.addr)  # over TCP: the worker whose host goes away
    gone.send(T.CAN_DO, "reverse")
    gone.send(T.PRE_SLEEP)
    gone.send(T.ECHO_REQ, "registered")
    gone.expect(T.ECHO_RES)
    caller, result = call_in_thread(f"unix:{unix}", "reverse", "abc", timeout=WITHIN + 10)
    gone.expect(T.NOOP)  # the job is there
    gone.send(T.GRAB_JOB)
    handle = gone.expect(T.JOB_ASSIGN).args[0]
    # Its news carries the ACK of the assignment (else a delayed ACK cut with the path left
    # the server retransmitting, which keepalive does not cover) and has no reply: once
    # the server has acknowledged it, neither side has bytes in flight.
    gone.send(T.WORK_STATUS, handle, b"1", b"2")
    wait_for("the worker's news acknowledged", lambda: _unacked(gone.sock) == 0)
    _ip("rule add pref 10 to 127.0.0.1 blackhole")
    began = time.monotonic()
    worker = farm.Worker(f"unix:{unix}")  # the Unix socket is not cut
    worker.register("reverse", lambda job: job.data[::-1])
    serving = threading.Thread(target=worker.work, daemon=True)
    serving.start()
    try:
        caller.join(WITHIN)
        if result and isinstance(result[0], bytes):
            print(f"served {result[0].decode()} {time.monotonic() - began:.1f}", flush=True)
        else:
            print("not served", result, flush=True)
    finally:
        worker.stop()
        serving.join(10)
        server.stop()
        caller.join(WITHIN + 10)


def client_side() -> None:
    _loopback_cuttable()
    net.KEEPALIVE = (1, 1, 2)
    unix = tempfile.mkdtemp() + "/gearman.sock"
    server = start_farm_server(unix=unix)
    held, release = threading.Event(), threading.Event()

    def hold(job: farm.worker.Job) -> bytes:
        held.set()
        release.wait(WITHIN + 10)
        return b"too late"

    worker = farm.Worker(f"unix:{unix}")  # the Unix socket is not cut
    worker.register("hold", hold)
    serving = threading.Thread(target=worker.work, daemon=True)
    serving.start()
    try:
        asyncio.run(_call_held(server.addr, held))
    finally:
        _ip("rule del pref 10")
        release.set()
        worker.stop()
        serving.join(10)
        server.stop()


async def _call_held(addr: str, held: threading.Event) -> None:
    async with farm.AsyncClient(addr) as client:
        call = asyncio.ensure_future(client.call("hold", b"x"))
        assert await asyncio.to_thread(held.wait, WITHIN), "the job never reached the worker"
        # The call's submit acknowledged: nothing of the client's in flight (that would be
        # TCP's retransmission timer's to give up on, minutes later, not the keepalive's).
        sock = client._conns[addr].transport.get_extra_info("socket")
        await asyncio.to_thread(wait_for, "the submit acknowledged", lambda: _unacked(sock) == 0)
        _ip("rule add pref 10 to 127.0.0.1 blackhole")
        began = time.monotonic()
        try:
            await asyncio.wait_for(call, WITHIN)
        except TimeoutError:
            print("not noticed", flush=True)
        except farm.FarmError as exc:
            print(f"noticed {time.monotonic() - began:.1f} {type(exc).__name__}", flush=True)


if __name__ == "__main__":
    main()
