"""Coverage-guided fuzzing of the server's connections with atheris: admin lines and
packets, interleaved, on TCP peers and a Unix-socket peer of the server's own user.

    python tests/fuzz/fuzz_connections.py -runs=50000

fuzz_decoder.py fuzzes the bytes to packets; this drives what the server does with them.
Each input is a script of steps on three connections to one Hub (no sockets, no loop: the
test_pair way): raw bytes, an admin command (gearmand's and farm's own: `drain`, `killing`,
`claim`, `poolfunctions` on the Unix socket) with a fuzzed argument and line end, a packet
with fuzzed arguments, a worker that registers and grabs, a submit, a connection closed
and opened again. A connection's ``internal error`` (a bug caught, the connection closed)
or any record logged with a traceback fails the input.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from farm import protocol as p
    from farm.protocol import PacketType as T
    from farm.server.connection import Connection
    from farm.server.hub import Hub
    from farm.server.options import parse_args

from tests.helpers.pair import MemoryTransport


class Transport(MemoryTransport):
    """What the admin side and back-pressure ask of a transport too."""

    def get_write_buffer_size(self) -> int:
        return len(self.written)

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Tracebacks(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "internal error" in record.getMessage():
            raise AssertionError(f"logged: {record.getMessage()} {record.exc_info!r}")


LOG = logging.getLogger("farm")
LOG.addHandler(Tracebacks())
LOG.setLevel(logging.DEBUG)
LOG.propagate = False

ADMIN = [
    b"status", b"prioritystatus", b"workers", b"show jobs", b"show unique jobs",
    b"show poison jobs", b"jobs", b"cancel job ", b"maxqueue f", b"maxqueue f 1",
    b"maxqueue f 1 1 1", b"create function ", b"drop function ", b"getpid", b"version",
    b"verbose", b"metrics", b"peers", b"peers fd:", b"drain fd:", b"killing fd:",
    b"served fd:", b"claim 10 0 f", b"poolfunctions ", b"drain pid:", b"show ", b"",
]  # fmt: skip
ENDS = [b"\n", b"\r\n", b" \n", b"\0x\n", b"\r\r\n"]
NAMES = [b"f", b"g", b"farm.python", b""]
SUBMITS = [T.SUBMIT_JOB, T.SUBMIT_JOB_BG, T.SUBMIT_JOB_HIGH, T.SUBMIT_JOB_LOW_BG]
PACKETS = sorted(p.PACKETS)


def opened(hub: Hub, index: int, generation: int) -> Connection:
    conn = Connection(hub)
    conn.connection_made(Transport())  # type: ignore[arg-type]  # a stand-in
    conn.fd = 10 + index + 3 * generation
    if index == 2:  # the Unix socket's peer, of the server's own user
        conn.ip, conn.peer_uid, conn.peer_pid = "unix", os.geteuid(), 4321
    return conn


def word(fdp: Any) -> bytes:
    picks = [b"H:x:1", b"10", b"11", b"12", b"f", b"g", b"farm.python"]
    return fdp.PickValueInList(picks) if fdp.ConsumeBool() else fdp.ConsumeBytes(8)


def step(hub: Hub, conn: Connection, fdp: Any) -> None:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        conn.data_received(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
    elif kind == 1:
        line = fdp.PickValueInList(ADMIN)
        if line.endswith((b" ", b":")):
            line += word(fdp)
        conn.data_received(line + fdp.PickValueInList(ENDS))
    elif kind == 2:
        ptype = fdp.PickValueInList(PACKETS)
        args = [word(fdp).replace(b"\0", b"") for _ in range(p.PACKETS[ptype].nargs)]
        conn.data_received(p.encode_req(ptype, *args))
    elif kind == 3:
        name = fdp.PickValueInList(NAMES)
        conn.data_received(p.encode_req(T.CAN_DO, name) + p.encode_req(T.GRAB_JOB_ALL))
    else:
        ptype = fdp.PickValueInList(SUBMITS)
        unique = fdp.PickValueInList([b"", b"u"])
        conn.data_received(p.encode_req(ptype, fdp.PickValueInList(NAMES), unique, b"d"))


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    hub = Hub(parse_args(["--store", "none", "--max-packet", "4096", "--job-retries", "2"]))
    conns = [opened(hub, i, 0) for i in range(3)]
    for generation in range(1, fdp.ConsumeIntInRange(1, 40) + 1):
        index = fdp.ConsumeIntInRange(0, 2)
        if conns[index].closed or fdp.ConsumeIntInRange(0, 9) == 0:  # gone: open again
            conns[index].connection_lost(None)
            conns[index] = opened(hub, index, generation)
        else:
            step(hub, conns[index], fdp)
    for conn in conns:
        conn.connection_lost(None)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
