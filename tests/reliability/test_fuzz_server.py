"""Fuzzing a live server: random and mutated packets, and admin lines as a broken tool
sends them, never kill it or disturb others.

Each example opens a fresh hostile connection and throws bytes at it; after
every example a well-behaved connection must still get its ECHO back and the
job queued at the start must still be there.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = start_farm_server("--max-packet", "65536")
    yield srv
    assert srv.proc.poll() is None, "the server died during fuzzing"
    srv.stop()


@pytest.fixture(scope="module")
def witness(server: Server) -> Iterator[Peer]:
    """A well-behaved client with one background job queued before the fuzzing starts."""
    peer = Peer(server.addr)
    peer.send(T.SUBMIT_JOB_BG, "fuzz-witness", "keep-me", "payload")
    peer.expect(T.JOB_CREATED)
    yield peer
    peer.close()


def valid_packet() -> st.SearchStrategy[bytes]:
    def build(ptype: int, parts: list[bytes]) -> bytes:
        spec = p.PACKETS[ptype]
        args = [a.replace(b"\0", b"") for a in parts[: spec.nargs]]
        args += [b""] * (spec.nargs - len(args))
        return p.encode_req(ptype, *args)

    return st.builds(
        build,
        st.sampled_from(sorted(p.PACKETS)),
        st.lists(st.binary(max_size=80), max_size=8),
    )


def mutate(raw: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(raw)
    for index, value in flips:
        if data:
            data[index % len(data)] = value
    return bytes(data)


#: The admin text protocol's words (gearmand's and farm's own), to build lines from.
ADMIN_WORDS = [
    "status", "prioritystatus", "workers", "show", "jobs", "unique", "poison", "cancel",
    "job", "maxqueue", "create", "drop", "function", "getpid", "version", "verbose",
    "metrics", "peers", "drain", "killing", "served", "claim", "poolfunctions",
    "f", "H:x:1", "fd:3", "pid:1", "tcp:1", "0", "1", "-1", "99999999999999999999",
]  # fmt: skip  # not fuzz-witness: `drop function` would take the witness's job


def admin_lines() -> st.SearchStrategy[bytes]:
    """Admin lines as a broken tool sends them: words and odd bytes, ended by LF, CRLF, a
    CR alone, a NUL or nothing, some long (the server reads 8 KiB a line), many at once."""
    word = st.one_of(
        st.sampled_from(ADMIN_WORDS).map(str.encode),
        st.binary(min_size=1, max_size=12).filter(lambda b: b[0] != 0),
        st.integers(8000, 8300).map(lambda n: b"x" * n),
    )
    end = st.sampled_from([b"\n", b"\r\n", b"\r", b"\0\n", b"", b"\r\r\n", b" \n"])
    line = st.builds(lambda w, e: b" ".join(w) + e, st.lists(word, min_size=1, max_size=5), end)
    return st.one_of(
        st.lists(line, max_size=8).map(b"".join),
        st.builds(lambda one, n: one * n, line, st.integers(100, 3000)),  # pipelined
    )


hostile = st.one_of(
    st.binary(max_size=400),
    admin_lines(),
    st.lists(valid_packet(), max_size=6).map(b"".join),
    st.builds(
        mutate,
        st.lists(valid_packet(), min_size=1, max_size=4).map(b"".join),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    ),
    st.builds(
        lambda t, size, body: b"\0REQ" + t.to_bytes(4, "big") + size.to_bytes(4, "big") + body,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=64),
    ),
)


def throw(addr: str, data: bytes) -> None:
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the server may close on us; that is an allowed answer


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=hostile)
def test_hostile_bytes_never_hurt_the_server_or_other_connections(
    server: Server, witness: Peer, data: bytes
) -> None:
    throw(server.addr, data)
    witness.send(T.ECHO_REQ, "still here")
    assert witness.expect(T.ECHO_RES).args == (b"still here",)
    assert server.proc.poll() is None


def test_the_witness_job_survived_the_fuzzing(server: Server, witness: Peer) -> None:
    worker = Peer(server.addr)
    worker.send(T.CAN_DO, "fuzz-witness")
    worker.send(T.GRAB_JOB_UNIQ)
    pkt = worker.expect(T.JOB_ASSIGN_UNIQ)
    assert pkt.args[1:] == (b"fuzz-witness", b"keep-me", b"payload")
    worker.close()
