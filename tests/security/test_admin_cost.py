"""What a local user can make the server spend on answering read-only questions: the
admin port and the metrics are open to every account on the host, and the server
answers them in the loop that serves every job."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from farm import protocol as p
from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server
from tests.helpers.waiting import wait_for

NAMES = 8 * 4096  # 4,096 a connection (--max-abilities)


def received(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("farm_server_received_bytes"))
    return float(line.split()[-1])


def test_a_slow_metrics_exposition_is_reused_not_made_again_for_each_ask(
    peer_factory: Callable[[str], Peer],
) -> None:
    # 65,536 functions held by a local user's TCP workers made one `metrics` take 2-4 s of
    # the server's loop here; asked in a loop (or through the supervisor's endpoint, 4
    # threads) the Executor's calls took 3.5 s each. A slow exposition is now answered
    # again, unchanged, for ten times as long as it took.
    unix = str(Path(tempfile.mkdtemp(prefix="farm-cost-")) / "gearman.sock")
    srv = start_farm_server(unix=unix)
    try:
        wait_for("the Unix socket", lambda: os.path.exists(unix))
        for c in range(NAMES // 4096):
            hog = peer_factory(srv.addr)
            names = (b"%03d%05d" % (c, i) + b"f" * 504 for i in range(4096))
            hog.send_raw(b"".join(p.encode_req(T.CAN_DO, name) for name in names))
            hog.send(T.ECHO_REQ, "sync")
            hog.expect(T.ECHO_RES, timeout=60)
        asker = peer_factory(srv.addr)
        first = asker.admin("metrics", timeout=60)
        assert 'function="other"' in first
        again = asker.admin("metrics", timeout=60)  # the server read more bytes meanwhile
        assert received(again) == received(first), "the exposition was made again"
        local = Peer(f"unix:{unix}")  # whoever asks, and however
        assert received(local.admin("metrics", timeout=60)) == received(first)
        local.close()
    finally:
        srv.stop()


def test_a_listing_tens_of_megabytes_long_is_read_in_linear_time(tmp_path: Path) -> None:
    # The `status` of a server holding 65,536 functions of 512-byte names (any local user
    # can make it hold them) is 34 MB. The admin client joined it chunk by chunk into bytes,
    # copying all it had each time: 12 s here, for every farm.Executor() asking how many
    # workers serve it, every `farm status`, and the supervisor's questions about command
    # workers in its main loop. It reads into a bytearray now (0.15 s).
    listing = (b"f" * 511 + b"\t0\t0\t1\n") * NAMES * 2 + b".\n"
    path = str(tmp_path / "inflated.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(100)
                for at in range(0, len(listing), 65536):  # as a busy server's writes come
                    conn.sendall(listing[at : at + 65536])

        server = threading.Thread(target=answer, daemon=True)
        server.start()
        started = time.monotonic()
        reply = admin_query(f"unix:{path}", "status", timeout=30)
        took = time.monotonic() - started
        server.join(30)
    assert len(reply) == len(listing)
    assert took < 3, f"{len(listing) >> 20} MiB took {took:.1f}s to read"
