"""Hostile input's tests' tools: packets built by hand, and a queued job whose survival
shows the server stayed healthy for everybody else; the fixtures that queue it (keeper_any,
keeper_farm, small_farm), which a test module takes as `keeper_any = badinput.keeper_any`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server


def header(ptype: int, size: int, magic: bytes = b"\0REQ") -> bytes:
    return magic + struct.pack(">II", ptype, size)


def packet(ptype: int, body: bytes, magic: bytes = b"\0REQ") -> bytes:
    return header(ptype, len(body), magic) + body


def sync(peer: Peer) -> None:
    peer.send(T.ECHO_REQ, b"sync")
    assert peer.expect(T.ECHO_RES).args == (b"sync",)


def queue_keeper(srv: Server) -> tuple[Peer, bytes]:
    """A background job queued before the bad input arrives."""
    c = Peer(srv.addr)
    c.send(T.SUBMIT_JOB_BG, "keep", "", "kept")
    h = c.expect(T.JOB_CREATED).args[0]
    return c, h


def assert_healthy(srv: Server, handle: bytes) -> None:
    """A new, well-behaved connection works and the queued job is still there."""
    assert srv.proc.poll() is None, "the server died"
    p = Peer(srv.addr)
    try:
        p.send(T.ECHO_REQ, b"ok?")
        assert p.expect(T.ECHO_RES).args == (b"ok?",)
        status = p.admin("status")
        assert "keep\t1\t0\t0\n" in status, status
        p.send(T.GET_STATUS, handle)
        assert p.expect(T.STATUS_RES).args[1] == b"1"
    finally:
        p.close()


@pytest.fixture
def keeper_any(any_server) -> Iterator[tuple[Server, bytes]]:
    c, h = queue_keeper(any_server)
    yield any_server, h
    c.close()


@pytest.fixture
def keeper_farm(farm_server) -> Iterator[tuple[Server, bytes]]:
    c, h = queue_keeper(farm_server)
    yield farm_server, h
    c.close()


@pytest.fixture
def small_farm() -> Iterator[tuple[Server, bytes]]:
    srv = start_farm_server("--max-packet", "1024")
    c, h = queue_keeper(srv)
    yield srv, h
    c.close()
    srv.stop()
