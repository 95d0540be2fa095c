"""The worker's socket looks (farm.workerwire) on descriptors past select()'s 1,023: a
job's open files push a worker's later sockets there, and select() raises ValueError for
them, which ended work() when a server hung (the look for a grab's answer past
connect_timeout used select)."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from farm.workerwire import peer_gone, readable_now

HIGH = 1500


def test_a_socket_past_select_s_range_is_looked_at() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH and hard != resource.RLIM_INFINITY and hard <= HIGH:
        pytest.skip(f"the hard descriptor limit ({hard}) does not reach {HIGH}")
    if soft <= HIGH:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH + 1, hard))
    ours, theirs = socket.socketpair()
    high = socket.socket(fileno=os.dup2(ours.fileno(), HIGH))
    try:
        assert not readable_now(high)
        theirs.sendall(b"\0REQ")
        assert readable_now(high)
        assert not peer_gone(high)
    finally:
        high.close()
        ours.close()
        theirs.close()
        if soft <= HIGH:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
