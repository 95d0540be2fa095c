"""What a local user's worker connection can make the server spend by saying it sleeps.

A worker may register 4,096 functions (--max-abilities). Putting it to sleep puts it in
each one's list of sleepers; a PRE_SLEEP, or a held grab, repeated while it already slept
did all of that again: 60 KB of them (5,000 packets) held the server's loop, and with it
every Executor call, for 25 s."""

from __future__ import annotations

import os
import socket
import time

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import connect, start_farm_server
from tests.helpers.waiting import wait_for

REPEATS = 5000


@pytest.mark.parametrize("how", ["pre-sleep", "held-grab"])
def test_a_worker_saying_again_that_it_sleeps_costs_the_server_nothing_more(
    unix_sock: str, how: str
) -> None:
    srv = start_farm_server(unix=unix_sock)
    try:
        hog = connect(srv.addr)
        names = b"".join(p.encode_req(T.CAN_DO, b"f%04d" % n) for n in range(4096))
        hog.sendall(names + p.encode_req(T.ECHO_REQ, b"sync"))
        hog.settimeout(60)
        replies = b""
        while not replies.endswith(b"sync"):
            replies += hog.recv(1 << 16)
        wait_for("the Unix socket", lambda: os.path.exists(unix_sock))
        local = Peer(f"unix:{unix_sock}")
        if how == "pre-sleep":
            burst = p.encode_req(T.PRE_SLEEP) * REPEATS
        else:
            burst = p.encode_req(T.OPTION_REQ, b"held-grab") + p.encode_req(T.GRAB_JOB) * REPEATS
        hog.sendall(burst)
        time.sleep(0.05)  # read by the server before the echo below
        started = time.monotonic()
        local.send(T.ECHO_REQ, "mine")
        assert local.expect(T.ECHO_RES, timeout=60).args == (b"mine",)
        took = time.monotonic() - started
        assert took < 2, f"{len(burst)} bytes of {how} held the server's loop {took:.1f}s"
        local.close()
        hog.shutdown(socket.SHUT_RDWR)
        hog.close()
    finally:
        srv.stop()
