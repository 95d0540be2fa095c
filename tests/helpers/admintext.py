"""The admin text protocol's tests' tools: an admin connection that returns replies as exact
bytes, a listing's lines, the raw packets that set a scene (submit, a worker), and the
admin_factory fixture, which a test module takes as `admin_factory = admintext.admin_factory`.
"""

from __future__ import annotations

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, connect


class Admin:
    """A raw admin connection that returns replies as exact bytes."""

    def __init__(self, srv: Server) -> None:
        self.sock = connect(srv.addr, timeout=10)
        self.buf = b""

    def _read_until(self, done) -> bytes:
        while not done(self.buf):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; got {self.buf!r}")
            self.buf += data
        return self.buf

    def line(self, cmd: bytes) -> bytes:
        """A one-line reply (OK ..., ERR ...)."""
        self.sock.sendall(cmd)
        self._read_until(lambda b: b"\n" in b)
        reply, _, self.buf = self.buf.partition(b"\n")
        return reply + b"\n"

    def listing(self, cmd: bytes) -> bytes:
        """A list reply ending in a `.` line."""
        self.sock.sendall(cmd)
        self._read_until(lambda b: b == b".\n" or b"\n.\n" in b or b.startswith(b"ERR"))
        if self.buf.startswith(b".\n"):
            reply, self.buf = b".\n", self.buf[2:]
            return reply
        if self.buf.startswith(b"ERR"):
            return self.line(b"")
        idx = self.buf.index(b"\n.\n") + 3
        reply, self.buf = self.buf[:idx], self.buf[idx:]
        return reply

    def close(self) -> None:
        self.sock.close()


def sync(peer: Peer) -> None:
    peer.send(T.ECHO_REQ, b"sync")
    assert peer.expect(T.ECHO_RES).args == (b"sync",)


def submit(c: Peer, func: str, data: bytes = b"x", unique: bytes = b"", ptype=T.SUBMIT_JOB):
    c.send(ptype, func, unique, data)
    return c.expect(T.JOB_CREATED).args[0]


def worker(peer_factory, srv: Server, *funcs: str, client_id: str | None = None) -> Peer:
    w = peer_factory(srv.addr)
    if client_id is not None:
        w.send(T.SET_CLIENT_ID, client_id)
    for f in funcs:
        w.send(T.CAN_DO, f)
    sync(w)
    return w


def lines(listing: bytes) -> list[bytes]:
    assert listing.endswith(b".\n"), listing
    return listing[:-2].split(b"\n")[:-1] if listing != b".\n" else []


@pytest.fixture
def admin_factory():
    conns: list[Admin] = []

    def make(srv: Server) -> Admin:
        a = Admin(srv)
        conns.append(a)
        return a

    yield make
    for a in conns:
        a.close()
