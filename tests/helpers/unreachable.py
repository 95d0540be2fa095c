"""A worker asleep on a job server whose host becomes unreachable, run in a network
namespace of its own (``unshare -n``; root): every packet to 127.0.0.1 is dropped, as when
the server's host dies or the network between is cut, so no FIN nor RST ever reaches the
worker. Prints ``noticed SECONDS`` once the worker calls the server lost (``not noticed``
if it did not within ``WITHIN``), then ``served RESULT`` once the path is back.

The keepalive timers are cut to seconds (``farm.net.KEEPALIVE``) so that this runs
in a few seconds rather than the minute and a half of the real ones.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import threading
import time

import farm
from farm import net
from tests.helpers.servers import start_farm_server
from tests.helpers.waiting import wait_for

WITHIN = 15.0
#: struct tcp_info: eight one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked (u32).
_UNACKED_AT = 24


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


def main() -> None:
    # The local routes' rule moves behind one that may drop everything to 127.0.0.1.
    _ip("link set lo up")
    _ip("rule del pref 0 lookup local")
    _ip("rule add pref 100 lookup local")
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


if __name__ == "__main__":
    main()
