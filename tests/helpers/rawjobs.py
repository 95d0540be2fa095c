"""Driving the job server over raw packets: submit, grab and sync as a client or worker
would, and the admin protocol's status and show jobs read as rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server

HANDLE = re.compile(rb"^H:[^\s]+:\d+$")


def sync(peer: Peer) -> None:
    """Round trip: everything ``peer`` sent before has been processed by the server."""
    peer.send(T.ECHO_REQ, b"sync")
    pkt = peer.expect(T.ECHO_RES)
    assert pkt.args == (b"sync",)


def submit(
    client: Peer, func: str, data: bytes | str = b"", unique: bytes | str = b"", ptype=T.SUBMIT_JOB
) -> bytes:
    client.send(ptype, func, unique, data)
    pkt = client.expect(T.JOB_CREATED)
    assert HANDLE.match(pkt.args[0]), pkt.args
    return pkt.args[0]


def worker(make: Callable[[str], Peer], srv: Server, *funcs: str) -> Peer:
    w = make(srv.addr)
    for f in funcs:
        w.send(T.CAN_DO, f)
    sync(w)
    return w


def grab(w: Peer, ptype=T.GRAB_JOB):
    w.send(ptype)
    return w.recv()


def admin_lines(make: Callable[[str], Peer], srv: Server, cmd: str) -> list[str]:
    a = make(srv.addr)
    text = a.admin(cmd)
    a.close()
    assert text.endswith(".\n"), repr(text)
    return [line for line in text.split("\n")[:-2]]


def status(make, srv: Server) -> dict[str, tuple[int, int, int]]:
    rows = {}
    for line in admin_lines(make, srv, "status"):
        name, total, running, workers = line.split("\t")
        rows[name] = (int(total), int(running), int(workers))
    return rows


def show_jobs(make, srv: Server) -> dict[bytes, tuple[int, int, int]]:
    rows = {}
    for line in admin_lines(make, srv, "show jobs"):
        handle, retries, ignored, persisted = line.split("\t")
        rows[handle.encode()] = (int(retries), int(ignored), int(persisted))
    return rows


def job_gone_or_ignored(make, srv: Server, handle: bytes) -> bool:
    row = show_jobs(make, srv).get(handle)
    return row is None or row[1] == 1


def sleeper(make, srv: Server, *funcs: str) -> Peer:
    w = worker(make, srv, *funcs)
    w.send(T.PRE_SLEEP)
    return w
